"""Tasks beyond classification: regression end to end (search → export → apply → raw-unit export), the metric's
direction honoured by the front and the export selectors, and a user's own Task by ``module:Class``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from autoprune.errors import ConfigError
from autoprune.study import choose_trial
from autoprune.study.storage import load_existing, make_storage
from autoprune.study.trials import front_trials
from conftest import write_space

EXE = str(Path(sys.executable).parent / "autoprune")
REGRESSION = {"name": "diabetes_small", "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
              "data": {"name": "diabetes"}, "task": {"kind": "regression"}, "train": {"epochs": 30, "lr": 0.003},
              "targets": {"grid": [0.8]}, "finetune": {"epochs": [2], "lr_scale": [1.0]},
              "baselines": ["uniform", "global", "lamp"], "trials": 5}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True)


def test_regression_search_export_apply_in_raw_units(tmp_path: Path) -> None:
    space = write_space(tmp_path / "reg.yaml", **REGRESSION)
    runs = tmp_path / "runs"
    res = _cli("search", str(space), "--runs", str(runs), "--no-track")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "val_mse" in res.stdout and "test_mse" in res.stdout
    study = load_existing("diabetes_small", make_storage(None, runs))
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert study.metric_names[0] == "val_mse"
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert all(t.values[0] < 1.5 for t in done)  # z-scored targets: 1.0 is "predicts the mean"
    # --min-metric is for maximized metrics: refused in one line naming the right flag
    wrong = _cli("export", "--study", "diabetes_small", "--runs", str(runs), "--min-metric", "0.5",
                 "-o", str(tmp_path / "x.json"))
    assert wrong.returncode == 2 and "use --max-metric" in wrong.stderr and not (tmp_path / "x.json").exists()
    bound = max(t.values[0] for t in front_trials(study))
    out = _cli("export", "--study", "diabetes_small", "--runs", str(runs), "--max-metric", str(bound),
               "-o", str(tmp_path / "p.json"))
    assert out.returncode == 0, out.stderr
    applied = _cli("apply", str(tmp_path / "p.json"), "--space", str(space), "--runs", str(runs),
                   "-o", str(tmp_path / "p.pt"), "--torchscript", str(tmp_path / "p.ts"))
    assert applied.returncode == 0, applied.stderr[-2000:]
    other = write_space(tmp_path / "cls.yaml", name="other")  # a classification space
    refused = _cli("apply", str(tmp_path / "p.json"), "--space", str(other), "--runs", str(runs),
                   "-o", str(tmp_path / "x.pt"))
    assert refused.returncode == 2 and "searched with task 'regression'" in refused.stderr
    assert json.loads((tmp_path / "p.json").read_text())["task"] == "regression"
    row = next(line for line in applied.stdout.splitlines() if "test_mse" in line)
    test_mse = float(row.split("│")[3])
    # the TorchScript file takes raw rows and predicts in raw units: its MSE over the raw test rows, divided by the
    # train split's target variance, is the z-scored test MSE that apply printed
    from autoprune.tasks.data import _split_indices, load_data

    splits = load_data("diabetes", targets="float")
    from sklearn.datasets import load_diabetes

    raw = load_diabetes()
    _, _, test_idx = _split_indices(len(raw.target), 0.15, 0.15, 0)
    ts = torch.jit.load(str(tmp_path / "p.ts"))
    with torch.no_grad():
        pred = ts(torch.tensor(raw.data[test_idx], dtype=torch.float32)).squeeze(1).numpy()
    std = splits.scaling["target_std"][0] if splits.scaling else 1.0
    raw_mse = float(np.mean((pred - raw.target[test_idx]) ** 2)) / std**2
    assert abs(raw_mse - test_mse) < 1e-3 * max(test_mse, 1.0)


def test_front_and_selectors_follow_a_minimized_metric() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    study.set_metric_names(["val_mse", "size"])
    for mse, size in ((0.30, 0.5), (0.40, 0.2), (0.35, 0.3), (0.90, 0.25), (0.50, 0.1)):
        study.add_trial(optuna.trial.create_trial(values=[mse, size], user_attrs={"eval": {"policy": "{}"}}))
    front = {(t.values[0], t.values[1]) for t in front_trials(study)}
    assert front == {(0.30, 0.5), (0.35, 0.3), (0.40, 0.2), (0.50, 0.1)}  # (0.90, 0.25) is dominated
    assert choose_trial(study, max_size=0.35).values == [0.35, 0.3]  # the lowest MSE within the size
    assert choose_trial(study, metric_bound=0.4).values == [0.40, 0.2]  # the smallest with MSE ≤ 0.4
    with pytest.raises(ConfigError, match=r"gets down to val_mse 0\.1"):
        choose_trial(study, metric_bound=0.1)


def test_a_users_own_task_by_module_and_class_from_the_cli(tmp_path: Path) -> None:
    import os

    space = write_space(tmp_path / "mae.yaml", **{**REGRESSION, "name": "mae_task",
                                                  "task": {"kind": "userpkg.tasks:MaeTask"}, "trials": 3})
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}  # where the user's package lives

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([EXE, *args], capture_output=True, text=True, env=env)

    res = cli("search", str(space), "--runs", str(runs), "--no-track")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "val_mae" in res.stdout
    study = load_existing("mae_task", make_storage(None, runs))
    assert study.metric_names[0] == "val_mae"
    assert cli("export", "--study", "mae_task", "--runs", str(runs), "--knee", "-o", str(tmp_path / "p.json")
               ).returncode == 0
    applied = cli("apply", str(tmp_path / "p.json"), "--space", str(space), "--runs", str(runs),
                  "-o", str(tmp_path / "p.pt"))
    assert applied.returncode == 0, applied.stderr[-2000:]
    assert "test_mae" in applied.stdout


LM = {"name": "lm_small", "model": {"name": "tiny_lm", "kwargs": {"d_model": 16, "layers": 1, "heads": 2}},
      "data": {"name": "text:pydoc", "kwargs": {"seq_len": 16, "max_chars": 20000}}, "task": {"kind": "causal_lm"},
      "layers": {"exclude": ["lm_head"]}, "train": {"epochs": 2, "lr": 0.01}, "targets": {"grid": [0.5]},
      "finetune": {"epochs": [1], "lr_scale": [1.0]}, "baselines": ["uniform", "lamp"], "trials": 3}


def test_causal_lm_search_export_apply_with_perplexity_on_the_front(tmp_path: Path) -> None:
    space = write_space(tmp_path / "lm.yaml", **LM)
    runs = tmp_path / "runs"
    res = _cli("search", str(space), "--runs", str(runs), "--no-track")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "val_perplexity" in res.stdout and "test_perplexity" in res.stdout
    study = load_existing("lm_small", make_storage(None, runs))
    assert study.metric_names[0] == "val_perplexity" and study.directions[0].name == "MINIMIZE"
    front = front_trials(study)
    assert front and all(1.0 < t.values[0] < 256.0 for t in front)  # between perfect and a uniform byte guess
    out = _cli("export", "--study", "lm_small", "--runs", str(runs), "--knee", "-o", str(tmp_path / "p.json"))
    assert out.returncode == 0, out.stderr
    applied = _cli("apply", str(tmp_path / "p.json"), "--space", str(space), "--runs", str(runs),
                   "-o", str(tmp_path / "p.pt"), "--torchscript", str(tmp_path / "p.ts"))
    assert applied.returncode == 0, applied.stderr[-2000:]
    assert "test_perplexity" in applied.stdout
    ts = torch.jit.load(str(tmp_path / "p.ts"))
    tokens = torch.tensor([list(b"def f(x): return x")[:16]])
    assert ts(tokens).shape == (1, 16, 256)  # token ids in, next-token logits out


def test_text_windows_are_next_token_pairs() -> None:
    from autoprune.tasks.data import load_data

    splits = load_data("text:pydoc", {"seq_len": 32, "max_chars": 10000}, targets="tokens")
    x, y = splits.train.x, splits.train.y
    assert x.dtype == torch.int64 and x.shape[1] == 32 and splits.num_classes == 256
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one token
    total = len(splits.train) + len(splits.val) + len(splits.test)
    assert total == (10000 - 1) // 32


def test_a_tokenized_data_set_from_a_callable() -> None:
    from autoprune.tasks.data import load_data

    splits = load_data("userpkg.factories:counting_tokens", {"n": 100, "seq_len": 8, "vocab": 40}, targets="tokens")
    assert splits.num_classes == 40 and splits.input_shape == (8,) and splits.train.x.dtype == torch.int64
    from autoprune.errors import DataError

    with pytest.raises(DataError, match="non-negative integer token ids"):
        load_data("userpkg.factories:blobs", targets="tokens")
