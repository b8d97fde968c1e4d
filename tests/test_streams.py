"""A data set that does not fit in memory: an IterableDataset of a million generated examples is searched with a
bounded budget; memory stays under 1 GB and does not grow with the stream's length."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune.errors import ConfigError, DataError
from autoprune.tasks.streams import read_stream
from conftest import write_space

TESTS = Path(__file__).resolve().parent


def _peak_rss_mb(space: Path, runs: Path) -> tuple[float, str]:
    """Run a search in a fresh process; its peak resident memory (MB) and its front."""
    code = ("import resource, autoprune\n"
            "if __name__ == '__main__':\n"
            f"    r = autoprune.search({str(space)!r}, runs_dir={str(runs)!r}, track=False, device='cpu')\n"
            "    print(r.front)\n"
            "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=TESTS)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    return float(lines[-1]), lines[-2]


def test_a_million_example_stream_is_searched_in_bounded_memory(tmp_path: Path) -> None:
    spaces = {}
    for n in (1_000_000, 100_000_000):  # a hundred times longer: the same examples are read, nothing more
        spaces[n] = write_space(tmp_path / f"s{n}.yaml", name=f"stream{n}",
                                model={"name": "userpkg.factories:tiny_net", "kwargs": {"hidden": 16}},
                                data={"name": "userpkg.factories:stream_of_blobs", "kwargs": {"n": n},
                                      "stream": {"train": 3000, "val": 500, "test": 500}},
                                train={"epochs": 3}, targets={"grid": [0.8]}, baselines=["uniform", "lamp"],
                                trials=3)
    rss = {n: _peak_rss_mb(space, tmp_path / f"runs{n}") for n, space in spaces.items()}
    assert all(mb < 1024 for mb, _ in rss.values()), rss
    (small, front_small), (big, front_big) = rss[1_000_000], rss[100_000_000]
    assert abs(big - small) < 0.1 * small  # memory does not grow with the stream's length
    assert front_small.replace("stream1000000", "x") == front_big.replace("stream100000000", "x")  # same data


def test_read_stream_fills_each_split_once_and_stops() -> None:
    reads = []

    class Counting(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
        def __iter__(self):  # type: ignore[no-untyped-def]
            for i in range(10**9):
                reads.append(i)
                yield torch.tensor([float(i)]), i % 2

    parts = read_stream(Counting(), {"train": 700, "val": 100, "test": 100}, 0.15, 0.15, 0, "counting")
    assert {k: len(v[1]) for k, v in parts.items()} == {"train": 700, "val": 100, "test": 100}
    ids = [set(v[0][:, 0].astype(int).tolist()) for v in parts.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])  # each example in one split only
    assert len(reads) < 5000  # stopped long before the end of the stream
    with pytest.raises(DataError, match="before any val, test example"):
        read_stream([(np.zeros(1, dtype=np.float32), 0)] * 3, {"train": 5, "val": 5, "test": 5}, 0.0, 0.0, 0, "t")


def test_budgets_in_optimizer_steps_become_epochs_of_the_loaded_train_split(tmp_path: Path,
                                                                             runs_dir: Path) -> None:
    import math

    from autoprune.config.space import SearchSpace
    from autoprune.study import SearchOptions, run_search
    from autoprune.workspace import load_workspace

    space = SearchSpace.from_yaml(write_space(tmp_path / "steps.yaml", name="steps", finetune={"lr_scale": [0.3]},
                                              ladder={"steps": [0, 10, 40], "keep": 1.0}, trials=3))
    ws = load_workspace(space, "cpu", runs_dir)
    per_epoch = math.ceil(len(ws.splits.train) / space.finetune.batch_size)
    assert ws.space.ladder is not None and ws.space.ladder.epochs == [0.0, 10 / per_epoch, 40 / per_epoch]
    result = run_search(space, SearchOptions(runs_dir=runs_dir, device="cpu"))
    assert result.summary["complete"] == 3
    assert abs(result.summary["finetune_epochs"] - 3 * 50 / per_epoch) < 1e-6  # 10 + 40 steps per trial
    with pytest.raises(ConfigError, match=r"field 'ladder' \(line \d+\): ladder: give epochs or steps, not both"):
        SearchSpace.from_yaml(write_space(tmp_path / "both.yaml", ladder={"steps": [0, 5], "epochs": [0, 1]}))
