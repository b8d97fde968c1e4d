"""A reinforcement-learning controller as an Optuna sampler (``--sampler rl``): REINFORCE over the search space.

AMC-style, with a policy simple enough to read: every float parameter gets a Gaussian over its range scaled to
[0, 1] (mean, log-std), every categorical one a softmax. Each finished trial is an episode whose reward is its
validation primary metric (in the task's direction: accuracy, or minus the MSE / perplexity) minus the mean of
earlier trials of the same size (the same global target, or a size within 2 % when there is no target param), so
the size objective is respected by comparing like with like; one policy-gradient step per trial moves the means
toward better-than-usual actions and shrinks or widens the spread. Preferences start at the centre of their box,
i.e. at the anchor heuristic's allocation. The state is a pure function of the study's finished trials (replayed
in trial order), so a resumed study or a second worker rebuilds the same controller; the draws are seeded per
trial number. Early-stopped and failed trials carry no reward and are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from autoprune.study.trials import metric_sign

__all__ = ["SIZE_BUCKET", "ControllerState", "RLControllerSampler"]

SIZE_BUCKET = 0.02  # without a target param, trials whose sizes differ by less than 2 % are compared


@dataclass
class ControllerState:
    """The policy's parameters and the reward baselines."""

    mean: dict[str, float] = field(default_factory=dict)  # float param -> mean on [0, 1]
    log_std: dict[str, float] = field(default_factory=dict)  # float param -> log std on [0, 1]
    logits: dict[str, np.ndarray] = field(default_factory=dict)  # categorical param -> one logit per choice
    baseline: dict[tuple[str, int], tuple[float, int]] = field(default_factory=dict)  # size class -> (mean, n)
    seen: set[int] = field(default_factory=set)  # trial numbers already learnt from


class RLControllerSampler(optuna.samplers.BaseSampler):
    """REINFORCE controller over a search space known up front (see the module docstring).

    Args:
        search_space: every parameter a candidate asks for, by name.
        seed: seeds each trial's draw together with the trial number.
        lr: step size of the policy-gradient update on normalized advantages.
        init_std: starting spread of every float parameter, as a fraction of its range.
        min_std: the spread never shrinks below this (keeps exploring).
    """

    def __init__(self, search_space: dict[str, BaseDistribution], seed: int = 0, lr: float = 0.1,
                 init_std: float = 0.25, min_std: float = 0.03) -> None:
        self._space = {k: d for k, d in search_space.items() if not d.single()}
        self._seed, self._lr, self._min_log_std = seed, lr, math.log(min_std)
        self._fallback = optuna.samplers.RandomSampler(seed=seed)
        self.state = ControllerState()
        for name, dist in self._space.items():
            if isinstance(dist, CategoricalDistribution):
                self.state.logits[name] = np.zeros(len(dist.choices))
            else:
                self.state.mean[name], self.state.log_std[name] = 0.5, math.log(init_std)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """The search space given at construction."""
        return dict(self._space)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        """Learn from the trials finished since the last call, then draw this trial's params from the policy."""
        sign = metric_sign(study)
        self.learn(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), sign)
        rng = np.random.default_rng([self._seed, trial.number])
        out: dict[str, Any] = {}
        for name, dist in search_space.items():
            if name in self.state.logits and isinstance(dist, CategoricalDistribution):
                p = _softmax(self.state.logits[name])
                out[name] = dist.choices[int(rng.choice(len(p), p=p))]
            elif name in self.state.mean and isinstance(dist, FloatDistribution):
                u = rng.normal(self.state.mean[name], math.exp(self.state.log_std[name]))
                out[name] = dist.low + float(np.clip(u, 0.0, 1.0)) * (dist.high - dist.low)
        return out

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        """Params outside the known space are drawn at random."""
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def learn(self, trials: Sequence[FrozenTrial], sign: float = 1.0) -> int:
        """One REINFORCE step per new finished trial that carries every param, in trial order; returns how many.
        ``sign``: −1 when the study minimizes its primary metric (a lower MSE or perplexity is rewarded)."""
        new = sorted((t for t in trials if t.number not in self.state.seen and t.values is not None
                      and self._space.keys() <= t.params.keys()), key=lambda t: t.number)
        for t in new:
            self.state.seen.add(t.number)
            advantage = self._advantage(t.values[0], _size_class(t.params, t.values[1]), sign)
            if advantage != 0.0:
                self._step(t.params, advantage)
        return len(new)

    def _advantage(self, value: float, bucket: tuple[str, int], sign: float = 1.0) -> float:
        """The metric minus the running mean of equally sized trials, in the task's direction (0 for the first of
        its size), clipped; one unit is 5 points of a maximized metric (accuracy), or 5 % of a minimized one."""
        mean, count = self.state.baseline.get(bucket, (value, 0))
        self.state.baseline[bucket] = (mean + (value - mean) / (count + 1), count + 1)
        unit = 0.05 if sign > 0 else 0.05 * max(abs(mean), 1e-12)
        return float(np.clip(sign * (value - mean) / unit, -3.0, 3.0)) if count else 0.0

    def _step(self, params: dict[str, Any], advantage: float) -> None:
        s, lr = self.state, self._lr * advantage
        for name, dist in self._space.items():
            if isinstance(dist, CategoricalDistribution):
                onehot = np.zeros(len(dist.choices))
                onehot[dist.choices.index(params[name])] = 1.0
                s.logits[name] = s.logits[name] + lr * (onehot - _softmax(s.logits[name]))
            elif isinstance(dist, FloatDistribution):
                u = (float(params[name]) - dist.low) / (dist.high - dist.low)
                std = math.exp(s.log_std[name])
                z = (u - s.mean[name]) / std
                # natural-gradient steps for a Gaussian: mean moves by a fraction of the gap, log-std by (z² − 1)/2
                s.mean[name] = float(np.clip(s.mean[name] + lr * (u - s.mean[name]), 0.0, 1.0))
                s.log_std[name] = float(np.clip(s.log_std[name] + 0.5 * lr * (z * z - 1.0), self._min_log_std, 0.0))


def _size_class(params: dict[str, Any], size: float) -> tuple[str, int]:
    """Which trials count as equally sized: the same target (to 0.1 %), else a size within 2 % (log scale)."""
    if isinstance(params.get("target"), float | int):
        return ("target", round(float(params["target"]) * 1000))
    return ("size", round(math.log(max(size, 1e-12)) / SIZE_BUCKET))


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()
