"""The methods a benchmark compares at each sparsity, all under the same fine-tune budget."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.config.budget import project_to_budget
from autoprune.config.events import ProgressSink
from autoprune.config.policy import Policy, Schedule
from autoprune.config.space import SearchSpace
from autoprune.errors import ConfigError, FinetuneDiverged
from autoprune.pruning.evaluate import Evaluation, evaluate
from autoprune.study import SearchOptions, finished_count, run_search
from autoprune.study.setup import Prepared
from autoprune.tasks import task_class

__all__ = [
    "DEFAULT_METHODS",
    "HEURISTICS",
    "SAMPLER_OF",
    "SEARCHES",
    "SEQUENTIAL",
    "TUNED",
    "MethodResult",
    "affordable",
    "base_policy",
    "bench_study",
    "evaluate_on_test",
    "grid_epochs",
    "heuristic_policy",
    "recipe_grid",
    "run_heuristic",
    "run_resequenced",
    "run_searcher",
    "search_space_for",
]

# <heuristic>_tuned: the heuristic's allocation with its recipe chosen on validation from the space's recipe grid,
# cut to the search's own compute when a search runs in the same benchmark (see run_heuristic)
TUNED = ("lamp_tuned", "erk_tuned", "global_tuned")
# <heuristic>_seq: pruned with SparseGPT's sequential calibration (each block's inputs from the pruned blocks)
SEQUENTIAL = ("uniform_seq", "owl_seq", "alpha_seq")
HEURISTICS = ("uniform", "global", "lamp", "erk", "sensitivity", "owl", "alpha", "random", "agp_uniform",
              "lamp_cubic3", *TUNED, *SEQUENTIAL)
# autoprune: the space's own sampler; _rl, _tpe, _evo: the same design with the RL controller, TPE or evolution;
# random_search: the same design, ladder and baselines with candidates drawn at random (a control)
SEARCHES = ("tpe_naive", "autoprune", "autoprune_rl", "autoprune_tpe", "autoprune_evo", "random_search")
# autoprune_seq: the autoprune search's answer at each level re-pruned with SparseGPT's sequential calibration (what
# `apply --criterion sparsegpt --calibration sequential` ships); runs the autoprune search if it is not listed
RESEQUENCED = ("autoprune_seq",)
SAMPLER_OF = {"autoprune_rl": "rl", "autoprune_tpe": "tpe", "autoprune_evo": "evolution", "random_search": "random"}
# owl and alpha run where the space lists them (a language model's: OWL needs Wanda's activations)
DEFAULT_METHODS = tuple(m for m in HEURISTICS + SEARCHES
                        if m not in ("tpe_naive", "autoprune_tpe", "autoprune_evo", "owl", "alpha", "random_search",
                                     "erk_tuned", "global_tuned", *SEQUENTIAL, *RESEQUENCED))


@dataclass
class MethodResult:
    """One method, one seed: the task's primary test metric (and size) at each sparsity level; NaN where it has no
    point."""

    method: str
    seed: int
    test: dict[float, float] = field(default_factory=dict)
    size: dict[float, float] = field(default_factory=dict)
    seconds: float = 0.0
    compute: dict[str, float] = field(default_factory=dict)  # searches: fine-tune epochs, evaluation seconds
    trial: dict[float, int] = field(default_factory=dict)  # searches: the front trial answering at each level


def heuristic_policy(prep: Prepared, name: str, level: float, seed: int) -> Policy:
    """The policy of a named heuristic at ``level``, with the space's default recipe at its production epochs
    (random = random preferences; AGP = uniform, cubic 3 steps; lamp_cubic3 = LAMP, cubic 3 steps: iterative
    against one-shot pruning at an equal total fine-tune budget; <h>_seq = h calibrated sequentially)."""
    base = base_policy(prep)
    if name in SEQUENTIAL:
        base, name = base.model_copy(update={"calibration": "sequential"}), name.removesuffix("_seq")
    if name == "random":
        rng = np.random.default_rng(seed)
        prefs = {f: float(rng.normal(0.0, 1.0)) for f in prep.ws.layers}
        return base.model_copy(update={"sparsity": project_to_budget(level, prefs, prep.ws.sizes, prep.ws.bounds)})
    if name in ("agp_uniform", "lamp_cubic3"):
        alloc = prep.heuristics["uniform" if name == "agp_uniform" else "lamp"]
        return base.model_copy(update={"sparsity": alloc(level), "schedule": Schedule(kind="iterative", steps=3)})
    return base.model_copy(update={"sparsity": prep.heuristics[name](level)})


def base_policy(prep: Prepared, criterion: str | None = None) -> Policy:
    """A policy of the workspace's model with no ratios yet, pruned with ``criterion`` (default: the space's first)
    under the space's default recipe at its production epochs."""
    space = prep.ws.space
    return Policy(model=space.model.name, fingerprint=prep.ws.fingerprint,
                  criterion=criterion or space.criteria[0],
                  granularity=space.granularity, finetune=space.default_recipe())


def recipe_grid(space: SearchSpace, policy: Policy) -> list[Policy]:
    """``policy`` under every combination of the space's recipe choices (LR scale, decay, distillation, schedule,
    criterion)."""
    out = []
    for crit, sched, lr_scale, decay, distill in itertools.product(*_recipe_axes(space)):
        recipe = space.finetune_recipe(policy.finetune.epochs, lr_scale, decay, distill)
        out.append(policy.model_copy(update={"criterion": crit, "schedule": sched, "finetune": recipe}))
    return out


def _recipe_axes(space: SearchSpace) -> tuple[list[Any], ...]:
    """The recipe choices a tuned heuristic's grid crosses: criteria, schedules, LR scales, decays, distillation."""
    ft = space.finetune
    return list(space.criteria), list(space.schedules), list(ft.lr_scale), list(ft.decay), list(ft.distill)


def grid_epochs(space: SearchSpace, levels: list[float]) -> float:
    """Fine-tune epochs a tuned heuristic's whole recipe grid costs over ``levels`` (every recipe at the production
    epochs): the budget that puts a search at equal compute with the ``<h>_tuned`` rows (``--max-epochs grid``)."""
    if (space.ladder is not None and space.ladder.steps) or space.finetune.steps:
        raise ConfigError(f"--max-epochs grid: space {space.name!r} budgets its fine-tune in optimizer steps; give "
                          "the budget in epochs instead")
    return math.prod(len(axis) for axis in _recipe_axes(space)) * len(levels) * space.default_recipe().epochs


def run_heuristic(prep: Prepared, name: str, levels: list[float], seed: int,
                  budget_epochs: float | None = None) -> MethodResult:
    """Evaluate a heuristic at each level with the test split measured. ``<h>_tuned``: heuristic h under the recipes
    the space offers, the best on validation reported (does the search win by its allocation or its recipe?): all
    of them, or as many as ``budget_epochs`` of fine-tuning per level pay for (equal compute with a search)."""
    if name in TUNED:
        return _tuned(prep, name.removesuffix("_tuned"), levels, seed, budget_epochs)
    res = MethodResult(name, seed)
    for level in levels:
        policy = heuristic_policy(prep, name, level, seed)
        ev = evaluate_on_test(prep, policy)
        if ev is None:  # its fine-tune diverged: no model at this level
            res.test[level] = res.size[level] = math.nan
            continue
        res.test[level] = (ev.test or {})[prep.ws.task.primary]
        res.size[level] = ev.size_value(prep.ws.space.size_metric)
        res.seconds += ev.times["total"]
        res.compute["finetune_epochs"] = res.compute.get("finetune_epochs", 0.0) + policy.finetune.epochs
    res.compute["eval_seconds"] = res.seconds
    return res


def search_space_for(space: SearchSpace, method: str, levels: list[float], trials: int, seed: int) -> SearchSpace:
    """The space a search method runs with: naive = independent ratios; autoprune = the file's own design,
    with its target grid set to the benchmark's levels; autoprune_rl = the same with the RL controller."""
    if method == "tpe_naive":
        return space.model_copy(update={"parametrization": "independent", "baselines": [], "trials": trials,
                                        "seed": seed, "sampler": "tpe", "anchor": "none"})
    targets = space.targets.model_copy(update={"grid": list(levels), "range": None})
    sampler = SAMPLER_OF.get(method, space.sampler)
    return space.model_copy(update={"targets": targets, "trials": trials, "seed": seed, "sampler": sampler})


def bench_study(space: str, method: str, seed: int) -> str:
    """The study a benchmark's search writes (kept in the bench folder; export and apply read it from there)."""
    return f"bench-{space}-{method}-s{seed}"


def run_searcher(space: SearchSpace, method: str, levels: list[float], trials: int, seed: int, runs_dir: Path,
                 track: bool, threads: int | None = None, max_epochs: float | None = None,
                 progress: ProgressSink | None = None) -> tuple[MethodResult, dict[str, float]]:
    """Run one search of ``trials`` trials in all, or until it has spent ``max_epochs`` fine-tune epochs (a study an
    interrupted benchmark left in ``runs_dir`` is topped up, not run again); its answer at a level is the
    best-validation front point with a target ≥ level, on test. ``progress`` shows its trials as ``autoprune
    search`` does."""
    from autoprune.api import search

    sp = search_space_for(space, method, levels, trials, seed)
    study = bench_study(space.name, method, seed)
    trials = max(trials - finished_count(study, runs_dir), 0)
    if track:
        result = search(sp, n_trials=trials, study=study, seed=seed, runs_dir=runs_dir, device="cpu", track=True,
                        threads=threads, max_epochs=max_epochs, progress=progress)
    else:
        result = run_search(sp, SearchOptions(n_trials=trials, study_name=study, seed=seed, runs_dir=runs_dir,
                                              threads=threads, max_epochs=max_epochs), progress=progress)
    res = MethodResult(method, seed, seconds=result.summary["wall_s"],
                       compute={k: float(v) for k, v in result.summary.items()
                                if k in ("finetune_epochs", "eval_seconds", "rung1_s", "complete", "trials")})
    task = task_class(space.task.kind)
    sign = 1.0 if task.direction == "maximize" else -1.0
    for level in levels:
        pts = [r for r in result.front if r["trial"] != "dense" and r["target"] >= level - 1e-3]  # by the policy's
        # target (a channel policy's measured sparsity misses it by a few channels' worth)
        best = max(pts, key=lambda r: sign * r[f"val_{task.primary}"], default=None)
        res.test[level] = best[f"test_{task.primary}"] if best else math.nan
        res.size[level] = best["size"] if best else math.nan
        if best:
            res.trial[level] = int(best["trial"])
    return res, result.summary


def run_resequenced(prep: Prepared, searched: MethodResult, study: str, runs_dir: Path) -> MethodResult:
    """``autoprune_seq``: each level's answer of the search ``searched`` (study ``study``) re-pruned with SparseGPT
    and sequential calibration, test measured (NaN where the search had no answer)."""
    from autoprune.study import load_existing, make_storage
    from autoprune.study.trials import trial_policy

    st = load_existing(study, make_storage(None, runs_dir))
    by_number = {t.number: t for t in st.get_trials(deepcopy=False)}
    res = MethodResult("autoprune_seq", searched.seed)
    for level in searched.test:
        number = searched.trial.get(level)
        ev = None if number is None else evaluate_on_test(prep, trial_policy(by_number[number]).model_copy(
            update={"criterion": "sparsegpt", "calibration": "sequential", "calibration_reference": None}))
        res.test[level] = (ev.test or {})[prep.ws.task.primary] if ev else math.nan
        res.size[level] = ev.size_value(prep.ws.space.size_metric) if ev else math.nan
        res.seconds += ev.times["total"] if ev else 0.0
    return res


def affordable(grid: list[Policy], budget_epochs: float | None, seed: int) -> list[Policy]:
    """The recipes a budget pays for: the declared recipe (the grid's first) and then the others in a seeded random
    order, as many as ``budget_epochs`` of fine-tuning cover (at least the declared one; all without a budget)."""
    if budget_epochs is None:
        return grid
    rest = [grid[i] for i in np.random.default_rng(seed).permutation(range(1, len(grid)))]
    out: list[Policy] = []
    spent = 0.0
    for p in [grid[0], *rest]:
        if out and spent + p.finetune.epochs > budget_epochs + 1e-9:
            break
        out.append(p)
        spent += p.finetune.epochs
    return out


def _tuned(prep: Prepared, heuristic: str, levels: list[float], seed: int,
           budget_epochs: float | None = None) -> MethodResult:
    """A heuristic's allocation with its recipe grid-searched on validation; test reported for the chosen one."""
    res = MethodResult(f"{heuristic}_tuned", seed)
    for level in levels:
        grid = affordable(recipe_grid(prep.ws.space, heuristic_policy(prep, heuristic, level, seed)), budget_epochs,
                          seed)
        evs = [ev for ev in (evaluate_on_test(prep, p) for p in grid) if ev is not None]  # a diverging recipe is out
        task = prep.ws.task
        best = max(evs, key=lambda ev: task.sign * ev.score)  # first best on validation: a deterministic choice
        res.test[level] = (best.test or {})[task.primary]
        res.size[level] = best.size_value(prep.ws.space.size_metric)
        res.seconds += sum(ev.times["total"] for ev in evs)
        res.compute["finetune_epochs"] = res.compute.get("finetune_epochs", 0.0) + sum(p.finetune.epochs for p in grid)
        res.compute["recipes"] = res.compute.get("recipes", 0.0) + len(grid) / len(levels)
    res.compute["eval_seconds"] = res.seconds
    return res


def evaluate_on_test(prep: Prepared, policy: Policy) -> Evaluation | None:
    """Evaluate with the test split measured; None when the fine-tune diverged (as a search trial would FAIL)."""
    try:
        return evaluate(prep.ws.model, policy, prep.ws.splits, with_test=True, task=prep.ws.task,
                        levels=prep.stores.get(policy.criterion))
    except FinetuneDiverged:
        return None
