"""The seams: plain-data modules never import torch; only study/ imports optuna; only tracking imports mlflow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "autoprune"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at_top_level) for each import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, id(node) in top))
    return out


def _modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def test_plain_data_modules_do_not_import_torch() -> None:
    code = ("import sys, autoprune.policy, autoprune.space, autoprune.budget; "
            "bad = [m for m in ('torch', 'optuna', 'mlflow') if m in sys.modules]; print(bad); assert not bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_only_study_package_imports_optuna() -> None:
    offenders = [str(p.relative_to(PKG)) for p in _modules() if "study" not in p.relative_to(PKG).parts
                 and any(m.split(".")[0] == "optuna" for m, _ in _imports(p))]
    assert offenders == []


def test_only_tracking_imports_mlflow() -> None:
    offenders = [str(p.relative_to(PKG)) for p in _modules() if p.name != "tracking.py"
                 and any(m.split(".")[0] == "mlflow" for m, _ in _imports(p))]
    assert offenders == []


def test_torchvision_never_imported_at_module_level() -> None:
    top_level = [str(p.relative_to(PKG)) for p in _modules()
                 if any(m.split(".")[0] == "torchvision" and top for m, top in _imports(p))]
    assert top_level == []


def test_nothing_imports_the_cli() -> None:
    offenders = [str(p.relative_to(PKG)) for p in _modules() if p.name != "cli.py"
                 and any(m == "autoprune.cli" for m, _ in _imports(p))]
    assert offenders == []


def test_production_path_does_not_import_optuna_or_mlflow() -> None:
    code = ("import sys, autoprune.production, autoprune.apply_cmd; "
            "bad = [m for m in ('optuna', 'mlflow') if m in sys.modules]; print(bad); assert not bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
