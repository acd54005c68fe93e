"""A theme's classifier as it is shipped: raw image files in, class names out.

This package depends on torch, torchvision, numpy, Pillow and pandas only. It travels
inside every MLflow model a study logs (as `code_paths`), so the model runs where this
repository is not installed; `tuning/` imports the same functions, so what a trial
measures is what the shipped model does.
"""
