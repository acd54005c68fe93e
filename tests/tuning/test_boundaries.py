"""tuning/ gets plain data and callables: it never imports Django or data_access."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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


def test_importing_every_tuning_module_loads_no_django():
    modules = sorted(f"tuning.{p.stem}" for p in (ROOT / "tuning").glob("*.py")
                     if p.stem != "__init__")
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{FORBIDDEN!r})\n"
            "print(','.join(bad))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
