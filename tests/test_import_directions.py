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
    code = ("import sys, autoprune.config.policy, autoprune.config.space, autoprune.config.budget; "
            "bad = [m for m in ('torch', 'optuna', 'mlflow') if m in sys.modules]; print(bad); assert not bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_only_study_package_imports_optuna() -> None:
    offenders = [str(p.relative_to(PKG)) for p in _modules() if "study" not in p.relative_to(PKG).parts
                 and any(m.split(".")[0] == "optuna" for m, _ in _imports(p))]
    assert offenders == []


def test_only_tracking_imports_mlflow() -> None:
    offenders = [str(p.relative_to(PKG)) for p in _modules() if p.relative_to(PKG).parts[0] != "tracking"
                 and any(m.split(".")[0] == "mlflow" for m, _ in _imports(p))]
    assert offenders == []


def test_torchvision_never_imported_at_module_level() -> None:
    top_level = [str(p.relative_to(PKG)) for p in _modules()
                 if any(m.split(".")[0] == "torchvision" and top for m, top in _imports(p))]
    assert top_level == []


def test_nothing_imports_the_cli() -> None:
    offenders = [str(p.relative_to(PKG)) for p in _modules() if p.relative_to(PKG).parts[0] != "cli"
                 and any(m.startswith("autoprune.cli") for m, _ in _imports(p))]
    assert offenders == []


def test_production_path_does_not_import_optuna_or_mlflow() -> None:
    code = ("import sys, autoprune.deploy.production, autoprune.cli.apply; "
            "bad = [m for m in ('optuna', 'mlflow') if m in sys.modules]; print(bad); assert not bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# The layer table (DESIGN.md): plain data → torch work (models, tasks, pruning) → orchestration (study, tracking,
# deploy, bench, api) → CLI. A module may import its own layer or a lower one, never a higher.
LAYERS: dict[str, int] = {
    **dict.fromkeys(["errors", "files", "processes", "plugins", "config"], 0),
    **dict.fromkeys(["models", "tasks", "pruning"], 1),
    **dict.fromkeys(["workspace", "study", "tracking", "deploy", "bench", "api"], 2),
    "cli": 3,
}


def _layer(module: str) -> int | None:
    """The layer of ``autoprune.<top>[...]`` (None for a module outside the package)."""
    parts = module.split(".")
    if parts[0] != "autoprune" or len(parts) < 2:
        return None
    return LAYERS[parts[1]]


def _top(p: Path) -> str:
    return p.relative_to(PKG).parts[0].removesuffix(".py")


def test_every_module_imports_only_its_own_layer_or_lower() -> None:
    unknown = sorted({_top(p) for p in _modules()} - set(LAYERS) - {"__init__"})
    assert unknown == [], f"add these to the layer table: {unknown}"
    upward = []
    for p in _modules():
        if _top(p) == "__init__":
            continue
        mine = LAYERS[_top(p)]
        for module, _ in _imports(p):
            theirs = _layer(module)
            if theirs is not None and theirs > mine:
                upward.append(f"{p.relative_to(PKG)} imports {module}")
    assert upward == []


def test_no_module_imports_another_modules_private_names() -> None:
    private = []
    for p in _modules():
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("autoprune"):
                private += [f"{p.relative_to(PKG)}: {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_")]
    assert private == []


def test_every_public_module_declares_its_api() -> None:
    missing = [str(p.relative_to(PKG)) for p in _modules() if not p.name.startswith("_")
               and "__all__" not in p.read_text()]
    assert missing == []


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "autoprune" and len(parts) > 1 else None


def test_packages_import_each_other_without_a_cycle() -> None:
    """Within a layer too (models, tasks and pruning share one): the package graph, lazy imports included, has no
    cycle (tasks may reach the torchvision / Hugging Face adapters in models; models never reaches tasks)."""
    graph: dict[str, set[str]] = {}
    for p in _modules():
        mine = _top(p)
        if mine == "__init__":
            continue
        for module, _ in _imports(p):
            theirs = _package(module)
            if theirs is not None and theirs != mine:
                graph.setdefault(mine, set()).add(theirs)
    seen: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in seen and (cycle := visit(nxt, [*path, node])):
                return cycle
        seen[node] = 2
        return None

    cycles = [c for n in sorted(graph) if n not in seen and (c := visit(n, []))]
    assert cycles == []
    assert "tasks" not in graph.get("models", set())
