"""tuning/ gets plain data and callables: it never imports Django or data_access."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("django", "data_access", "web")


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_tuning_module_imports_django_or_data_access():
    offenders = {str(p.relative_to(ROOT)): sorted(imported_roots(p) & set(FORBIDDEN))
                 for p in (ROOT / "tuning").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.slow
def test_importing_every_tuning_module_loads_no_django():
    modules = sorted(m.name for m in pkgutil.walk_packages([str(ROOT / "tuning")],
                                                           prefix="tuning."))
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{FORBIDDEN!r})\n"
            "print(','.join(bad))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_the_shipped_classifier_needs_nothing_of_this_repository():
    """theme_classifier travels inside every registered model: it may import torch,
    torchvision, numpy, Pillow, pandas and MLflow, and nothing of ours but itself."""
    allowed = {"theme_classifier", "torch", "torchvision", "numpy", "PIL", "pandas", "mlflow",
               "__future__", "base64", "binascii", "io", "json", "dataclasses", "typing", "re"}
    for path in (ROOT / "theme_classifier").rglob("*.py"):
        assert imported_roots(path) <= allowed, (path, imported_roots(path) - allowed)


def test_only_the_tracking_package_and_the_shipped_model_import_mlflow():
    """tuning.tracking is MLflow's one door (runs, registry, model loading and
    packaging); theme_classifier is the shipped model itself. bench/ is left out: it
    replays the original system, which called MLflow directly."""
    files = [p for folder in ("tuning", "web", "data_access") for p in (ROOT / folder).rglob("*.py")]
    files += [ROOT / name for name in ("launch.py", "predict.py", "manage.py")]
    offenders = sorted(str(p.relative_to(ROOT)) for p in files
                       if "mlflow" in imported_roots(p)
                       and p.relative_to(ROOT).parts[:2] != ("tuning", "tracking"))
    assert offenders == []
