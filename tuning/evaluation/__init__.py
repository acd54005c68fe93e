"""How good the chosen model is: figures from predictions, and the scoring runs that make them.

scores     balanced accuracy, macro F1, per-class precision/recall/F1 and the confusion
           matrix, from labels and predictions (numpy only: trials import it too).
held_out   the best trial's checkpoint scored once on the test split at the end of a study.
rescoring  the current champion scored with its own shipped model on a new study's split,
           when the theme changed since it was trained.
"""
