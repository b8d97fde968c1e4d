"""The README's Python API snippet, run as written (on the small test space, with fewer trials)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna

from autoprune.study import make_storage
from autoprune.study.storage import load_existing

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet() -> str:
    """The first ```python block of README.md."""
    found = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert found is not None, "README has no python block"
    return found.group(1)


def test_readme_api_snippet_runs_and_search_can_be_called_again(space_path: Path, runs_dir: Path, tmp_path: Path,
                                                                workspace: object) -> None:
    code = readme_snippet()
    swaps = {'"search_spaces/digits_cnn.yaml"': repr(str(space_path)), "n_trials=100": "n_trials=6",
             "n_trials=10": "n_trials=2", "max_size=0.1": "max_size=1.0"}
    for old, new in swaps.items():
        assert old in code, f"README snippet changed: {old} not found"
        code = code.replace(old, new)
    shutil.copytree(runs_dir / "models", tmp_path / "runs" / "models")  # the dense model, trained once per session
    (tmp_path / "snippet.py").write_text(code)
    res = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("{") and "sparsity" in lines[0]  # a front row
    accuracy, size = (float(x) for x in lines[-1].split())
    assert 0.5 < accuracy <= 1.0 and 0.0 < size < 1.0
    assert (tmp_path / "policy.json").exists() and (tmp_path / "pruned.pt").stat().st_size > 0  # apply_policy's
    study = load_existing("digits_small", make_storage(None, tmp_path / "runs"))
    assert sum(t.state.is_finished() for t in study.trials) == 8  # 6, then 2 more from the second call
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
