"""A searched anchor: every listed heuristic is a choice of the search space, so the space holds each heuristic at
each recipe; baselines are their own anchor with zero offsets; evolution may switch a child's anchor."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from autoprune.config.budget import project_to_budget, weighted_sparsity
from autoprune.config.sampling import SampleContext, sample
from autoprune.config.space import SearchSpace
from autoprune.study.baselines import baseline_params, enqueue_baselines
from autoprune.study.evolution import EvolutionSampler
from autoprune.study.sampler import search_distributions
from conftest import write_space

SIZES = {"a": 400, "b": 1000, "c": 2500}
BOUNDS = dict.fromkeys(SIZES, (0.0, 0.99))
PREFS = {"lamp": {"a": 1.0, "b": 0.0, "c": -1.0}, "erk": {"a": -0.5, "b": 0.5, "c": 0.0},
         "uniform": dict.fromkeys(SIZES, 0.0)}


def _alloc(name: str):  # type: ignore[no-untyped-def]
    return lambda t: project_to_budget(t, PREFS[name], SIZES, BOUNDS)


def _space(**extra: object) -> SearchSpace:
    return SearchSpace.model_validate({"name": "e", "model": {"name": "mlp"}, "data": {"name": "digits"},
                                       "targets": {"grid": [0.5, 0.8]}, "offset": 1.0,
                                       "anchor": ["lamp", "erk", "uniform"], "finetune": {"lr_scale": [0.1, 0.3]},
                                       "baselines": ["uniform", "lamp", "erk"], **extra})


def _ctx() -> SampleContext:
    anchors = {n: _alloc(n) for n in ("lamp", "erk", "uniform")}
    return SampleContext(model="m", fingerprint="f", sizes=SIZES, bounds=BOUNDS, anchor=anchors["lamp"],
                         anchors=anchors)


def test_the_anchor_is_a_searched_choice_and_zero_offsets_give_each_heuristic() -> None:
    space, ctx = _space(), _ctx()
    assert space.anchors == ["lamp", "erk", "uniform"]
    dists = search_distributions(space, ctx)
    assert list(dists["anchor"].choices) == ["lamp", "erk", "uniform"]  # type: ignore[attr-defined]
    for name in ("lamp", "erk", "uniform"):
        params = {"target": 0.8, "anchor": name, "ft_lr_scale": 0.1, **{f"pref/{f}": 0.0 for f in SIZES}}
        got = sample(space, optuna.trial.FixedTrial(params), ctx).sparsity
        assert got == pytest.approx(_alloc(name)(0.8))
    assert _alloc("lamp")(0.8) != pytest.approx(_alloc("erk")(0.8))


def test_baselines_that_are_anchors_carry_their_anchor_and_zero_offsets() -> None:
    space, ctx = _space(), _ctx()
    params, inside = baseline_params(space, ctx, _alloc("erk")(0.5), 0.5, "erk")
    assert inside and params["anchor"] == "erk" and all(params[f"pref/{f}"] == pytest.approx(0.0) for f in SIZES)
    study = optuna.create_study(directions=["maximize", "minimize"])
    heuristics = {n: _alloc(n) for n in ("uniform", "lamp", "erk")}
    assert enqueue_baselines(study, space, ctx, heuristics) == 6
    study.optimize(lambda t: (0.0, weighted_sparsity(sample(space, t, ctx).sparsity, SIZES)), n_trials=6)
    for t in study.trials:  # every enqueued heuristic is reproduced by the params it carries
        policy = sample(space, optuna.trial.FixedTrial(t.params), ctx)
        assert policy.sparsity == pytest.approx(heuristics[t.user_attrs["baseline"]](t.params["target"]))


def test_evolution_children_project_to_what_their_params_say_when_the_anchor_switches() -> None:
    space, ctx = _space(sampler="evolution"), _ctx()
    sampler = EvolutionSampler(search_distributions(space, ctx), ctx, [0.5, 0.8], space.offset, seed=1, redraw=0.5)
    study = optuna.create_study(sampler=sampler, directions=["maximize", "minimize"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seen: set[str] = set()

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        p = sample(space, trial, ctx)
        seen.add(trial.params["anchor"])
        assert math.isclose(weighted_sparsity(p.sparsity, SIZES), trial.params["target"], abs_tol=1e-9)
        return -p.sparsity["a"], weighted_sparsity(p.sparsity, SIZES)

    study.optimize(objective, n_trials=40)
    assert seen == {"lamp", "erk", "uniform"}
    late = [t.values[0] for t in study.trials[-8:]]
    early = [t.values[0] for t in study.trials[:8]]
    assert sum(late) / len(late) > sum(early) / len(early)  # selection still works across anchors


def test_activation_criteria_on_conv_layers_are_one_line_naming_the_layer_through_the_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = write_space(tmp_path / "s.yaml", anchor=["lamp", "owl"], criteria=["wanda"])
    exe = str(Path(sys.executable).parent / "autoprune")
    res = subprocess.run([exe, "search", str(path), "--runs", str(tmp_path / "runs"), "--no-track"],
                         capture_output=True, text=True)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert "dense model" not in res.stderr  # refused before any training
    assert len(lines) == 1 and "field 'criteria'" in lines[0] and "features.0 is Conv2d" in lines[0], res.stderr
