"""Every user error: exit code 2, exactly one line on stderr naming the culprit, no traceback, no new output file,
finished trials intact. One table, run through the real CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import SMALL_SPACE, write_space

EXE = str(Path(sys.executable).parent / "autoprune")


def _npz(path: Path, x: np.ndarray, y: np.ndarray) -> str:
    np.savez(path, x=x, y=y)
    return str(path)


def _rows(n: int = 60, features: int = 5, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, features)).astype(np.float32), np.arange(n) % classes


def _data_space(tmp: Path, name: str, x: np.ndarray, y: np.ndarray, **extra: object) -> str:
    data = _npz(tmp / f"{name}.npz", x, y)
    return str(write_space(tmp / f"{name}.yaml", name=name, model={"name": "mlp"}, data={"name": data}, **extra))


def _x_with_nan() -> tuple[np.ndarray, np.ndarray]:
    x, y = _rows()
    x[7, 2] = np.nan
    return x, y


def _yaml_text(tmp: Path, text: str) -> str:
    (tmp / "t.yaml").write_text(text)
    return str(tmp / "t.yaml")


def _lstm_by_channels(tmp: Path) -> str:
    space = yaml.safe_load(Path("search_spaces/lstm_digits.yaml").read_text())
    return _yaml_text(tmp, yaml.safe_dump({**space, "granularity": {"kind": "channel"}}))


# (case id, args builder given tmp folder and the searched study's runs dir, words the one line must contain)
Case = tuple[str, Callable[[Path, Path], list[str]], list[str]]
SPACE = "search_spaces/digits_cnn.yaml"
CASES: list[Case] = [
    ("unknown key", lambda t, r: ["search", str(write_space(t / "s.yaml", bogus=1))], ["bogus", "unknown key"]),
    ("value out of range", lambda t, r: ["search", str(write_space(t / "s.yaml", offset=100))], ["offset"]),
    ("key written twice", lambda t, r: ["search", _yaml_text(t, yaml.safe_dump(SMALL_SPACE) + "seed: 3\n")],
     ["seed", "written twice"]),
    ("lr_scale negative", lambda t, r: ["search", str(write_space(t / "s.yaml", finetune={"lr_scale": [-1]}))],
     ["finetune.lr_scale"]),
    ("epochs negative", lambda t, r: ["search", str(write_space(t / "s.yaml", finetune={"epochs": [-1]}))],
     ["finetune.epochs"]),
    ("ladder not increasing", lambda t, r: ["search", str(write_space(t / "s.yaml", ladder={"epochs": [0, 3, 2]}))],
     ["ladder.epochs"]),
    ("rank_by length", lambda t, r: ["search", str(write_space(
        t / "s.yaml", ladder={"epochs": [0, 1, 2], "rank_by": ["metric"]}, finetune={"lr_scale": [0.3]}))],
     ["rank_by"]),
    ("target out of range", lambda t, r: ["search", str(write_space(t / "s.yaml", targets={"grid": [1.5]}))],
     ["targets"]),
    ("not YAML", lambda t, r: ["search", _yaml_text(t, "name: [unclosed\n")], ["not valid YAML"]),
    ("missing space file", lambda t, r: ["search", str(t / "nope.yaml")], ["nope.yaml", "not found"]),
    ("unknown model", lambda t, r: ["search", str(write_space(t / "s.yaml", model={"name": "nosuchnet"}))],
     ["nosuchnet"]),
    ("model module missing", lambda t, r: ["search", str(write_space(t / "s.yaml", model={"name": "no.such:f"}))],
     ["no.such"]),
    ("unknown dataset", lambda t, r: ["search", str(write_space(t / "s.yaml", data={"name": "mnistish"}))],
     ["mnistish"]),
    ("data file missing", lambda t, r: ["search", str(write_space(t / "s.yaml", data={"name": "gone.npz"}))],
     ["gone.npz", "not found"]),
    ("layer pattern matches nothing", lambda t, r: ["search", str(write_space(
        t / "s.yaml", layers={"include": ["nope*"]}))], ["layers.include", "nope*"]),
    ("bounds pattern matches nothing", lambda t, r: ["search", str(write_space(
        t / "s.yaml", layers={"bounds": {"zzz": [0, 0.5]}}))], ["layers.bounds", "zzz"]),
    ("NaN in the data", lambda t, r: ["search", _data_space(t, "nan", *_x_with_nan())], ["row 7", "NaN"]),
    ("negative label", lambda t, r: ["search", _data_space(t, "neg", _rows()[0], np.arange(60) % 3 - 1)],
     ["label -1"]),
    ("float labels", lambda t, r: ["search", _data_space(t, "flt", _rows()[0], np.linspace(0, 1, 60))],
     ["integer class labels"]),
    ("one class", lambda t, r: ["search", _data_space(t, "one", _rows()[0], np.zeros(60, dtype=int))],
     ["only one class"]),
    ("labels far beyond the classes", lambda t, r: ["search", _data_space(
        t, "far", _rows()[0], np.where(np.arange(60) % 2 == 0, 0, 1000))], ["labels run up to 1000"]),
    ("three rows", lambda t, r: ["search", _data_space(t, "tiny", _rows(3)[0], np.array([0, 1, 0]))], ["3 rows"]),
    ("rows and labels differ", lambda t, r: ["search", _data_space(t, "mis", _rows()[0], np.arange(50) % 2)],
     ["60 rows", "50"]),
    ("--trials 0", lambda t, r: ["search", SPACE, "--trials", "0"], ["--trials"]),
    ("--trials -3", lambda t, r: ["search", SPACE, "--trials", "-3"], ["--trials"]),
    ("--timeout -5", lambda t, r: ["search", SPACE, "--timeout", "-5"], ["--timeout"]),
    ("--workers 0", lambda t, r: ["search", SPACE, "--workers", "0"], ["--workers"]),
    ("--sampler bayes", lambda t, r: ["search", SPACE, "--sampler", "bayes"], ["--sampler", "bayes"]),
    ("--device tpu7", lambda t, r: ["search", SPACE, "--device", "tpu7"], ["--device", "tpu7"]),
    ("--device cuda without CUDA", lambda t, r: ["search", SPACE, "--device", "cuda:7"], ["--device", "cuda:7"]),
    ("unknown option", lambda t, r: ["search", SPACE, "--bogus"], ["--bogus"]),
    ("unknown command", lambda t, r: ["prune-it"], ["prune-it"]),
    ("missing database driver", lambda t, r: ["search", SPACE, "--storage", "mysql://nobody@127.0.0.1:1/x"],
     ["--storage", "pip install"]),
    ("study reused with another space", lambda t, r: ["search", str(write_space(
        t / "s.yaml", targets={"grid": [0.5]})), "--study", "bad-input", "--runs", str(r), "--no-track"],
     ["bad-input", "--study NEW"]),
    ("front of an unknown study", lambda t, r: ["front", "--study", "nope", "--runs", str(r)], ["nope"]),
    ("export without a selector", lambda t, r: ["export", "--study", "bad-input", "--runs", str(r), "-o",
                                                str(t / "p.json")], ["exactly one of"]),
    ("export a trial that does not exist", lambda t, r: ["export", "--study", "bad-input", "--trial", "999",
                                                         "--runs", str(r), "-o", str(t / "p.json")], ["999"]),
    ("export --max-size 2", lambda t, r: ["export", "--study", "bad-input", "--max-size", "2", "--runs", str(r)],
     ["--max-size"]),
    ("export -o under a file", lambda t, r: ["export", "--study", "bad-input", "--knee", "--runs", str(r), "-o",
                                             str(Path(__file__)) + "/p.json"], ["-o", "not a folder"]),
    ("policy file missing", lambda t, r: ["apply", str(t / "none.json"), "--space", SPACE], ["none.json"]),
    ("policy not JSON", lambda t, r: ["apply", _yaml_text(t, "{oops"), "--space", SPACE], ["not valid JSON"]),
    ("apply --finetune-epochs -1", lambda t, r: ["apply", "p.json", "--finetune-epochs", "-1"],
     ["--finetune-epochs"]),
    ("apply --quantize int4", lambda t, r: ["apply", "p.json", "--quantize", "int4", "-o", str(t / "x.pt")],
     ["int4"]),
    ("apply without space or model", lambda t, r: ["apply", _policy(t, r), "-o", str(t / "x.pt")],
     ["--space", "--model"]),
    ("apply -o under a file", lambda t, r: ["apply", _policy(t, r), "-o", str(Path(__file__)) + "/x.pt"],
     ["-o", "not a folder"]),
    ("--runs in a folder that cannot be created", lambda t, r: ["search", SPACE, "--runs", "/sys/autoprune-runs",
                                                                "--no-track"], ["--runs", "/sys/autoprune-runs"]),
    ("--runs read-only (even for root)", lambda t, r: ["search", SPACE, "--runs", "/sys/kernel", "--no-track"],
     ["--runs /sys/kernel", "cannot write"]),
    ("--runs is a file", lambda t, r: ["search", SPACE, "--runs", str(Path(__file__)), "--no-track"],
     ["--runs", "cannot write"]),
    ("export -o into a read-only folder", lambda t, r: ["export", "--study", "bad-input", "--knee", "--runs", str(r),
                                                        "-o", "/sys/kernel/p.json"], ["-o", "not writable"]),
    ("apply -o into a read-only folder", lambda t, r: ["apply", _policy(t, r), "--space", SPACE, "-o",
                                                       "/sys/kernel/x.pt"], ["-o", "not writable"]),
    ("unknown task kind", lambda t, r: ["search", str(write_space(t / "s.yaml", task={"kind": "detection"})),
                                        "--no-track", "--runs", str(r)], ["task.kind 'detection'"]),
    ("float targets under classification", lambda t, r: ["search", str(write_space(
        t / "s.yaml", model={"name": "mlp"}, data={"name": "diabetes"})), "--no-track", "--runs", str(r)],
     ["diabetes", "task: {kind: regression}"]),
    ("task option it does not take", lambda t, r: ["search", str(write_space(
        t / "s.yaml", task={"kind": "classification", "options": {"top_k": 5}})), "--no-track", "--runs", str(r)],
     ["task.options", "top_k"]),
    ("bench unknown method", lambda t, r: ["bench", "--methods", "magic"], ["magic"]),
    ("channel pruning of an LSTM", lambda t, r: ["search", _lstm_by_channels(t), "--no-track", "--runs", str(r)],
     ["field 'granularity'", "rnn.weight_ih_l0 is LSTM"]),
    ("sequential calibration without SparseGPT", lambda t, r: ["search", str(write_space(
        t / "s.yaml", calibration="sequential")), "--no-track", "--runs", str(r)], ["calibration sequential",
                                                                                  "sparsegpt"]),
]


def _policy(tmp: Path, runs: Path) -> str:
    out = tmp / "p.json"
    subprocess.run([EXE, "export", "--study", "bad-input", "--knee", "--runs", str(runs), "-o", str(out)],
                   capture_output=True)
    return str(out)


@pytest.fixture(scope="module")
def searched(space_path: Path, tmp_path_factory: pytest.TempPathFactory, runs_dir: Path) -> Path:
    """A study with finished trials, which no bad input may touch."""
    runs = tmp_path_factory.mktemp("bad-input-runs")
    shutil.copytree(runs_dir / "models", runs / "models", dirs_exist_ok=True)
    res = subprocess.run([EXE, "search", str(space_path), "--study", "bad-input", "--runs", str(runs), "--trials",
                          "3", "--no-track"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return runs


def test_there_are_at_least_35_cases() -> None:
    assert len(CASES) >= 35


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(case: Case, searched: Path, tmp_path: Path, workspace: object) -> None:
    _, build, needles = case
    journal = (searched / "optuna.journal").read_bytes()
    args = build(tmp_path, searched)
    before = {p for p in tmp_path.rglob("*")}
    res = subprocess.run([EXE, *args], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2, res.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert {p for p in tmp_path.rglob("*")} == before  # no output file appeared
    assert (searched / "optuna.journal").read_bytes()[: len(journal)] == journal  # finished trials intact
