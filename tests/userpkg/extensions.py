"""A user's own criterion, allocation rule, schedule, sampler, model adapter and data source, named
``userpkg.extensions:...`` in a space."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from autoprune.models.adapters import ModelAdapter
from autoprune.models.layers import weight_of
from autoprune.models.zoo import MLP
from autoprune.pruning.criteria import Criterion
from autoprune.pruning.rules import AllocationRule
from autoprune.pruning.schedules import PruningSchedule
from autoprune.study.samplers import SamplerFactory, SamplerRequest
from autoprune.tasks.data import Split
from autoprune.tasks.sources import DataSource
from autoprune.tasks.training import LossFn


class SquaredMagnitude(Criterion):
    """w² (ranks like magnitude; a stand-in for any score a user has)."""

    needs_data = False

    def scores(self, model: nn.Module, layers: list[str], data: Split | None, *, seed: int = 0,
               loss_fn: LossFn = nn.functional.cross_entropy) -> dict[str, torch.Tensor]:
        """w² of every weight."""
        return {f: weight_of(model, f).detach().pow(2) for f in layers}


class FirstLayerDense(AllocationRule):
    """Keep the first unit dense, prune the others uniformly (autoprune projects it onto the target)."""

    def ratios(self, model: nn.Module, layers: list[str], target: float) -> dict[str, float]:
        """0 for the first unit, ``target`` elsewhere."""
        return {f: 0.0 if i == 0 else target for i, f in enumerate(layers)}


class LowCornerOptions(BaseModel):
    """The one option of :class:`LowCorner`: which categorical choice it always takes."""

    model_config = ConfigDict(extra="forbid")
    pick: int = 0


class LowCorner(SamplerFactory):
    """A sampler that always proposes every float at its lower bound and categorical choice ``pick``."""

    options = LowCornerOptions

    def create(self, request: SamplerRequest, options: Any) -> optuna.samplers.BaseSampler:
        """A RandomSampler whose every draw is the corner."""
        pick = options.pick

        class Corner(optuna.samplers.RandomSampler):
            def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
                if isinstance(dist, optuna.distributions.CategoricalDistribution):
                    return dist.choices[min(pick, len(dist.choices) - 1)]
                return dist.low

        return Corner(seed=request.seed)


class HalfThenAll(PruningSchedule):
    """Half the final sparsity at the first step, the rest at the last (any number of steps in between hold)."""

    def fractions(self, steps: int) -> list[float]:
        """0.5 until the last step, then 1."""
        return [0.5] * (steps - 1) + [1.0]


class Backwards(PruningSchedule):
    """Not a schedule: it would un-prune."""

    def fractions(self, steps: int) -> list[float]:
        """Decreasing fractions."""
        return [1.0, 0.5, 1.0]


class TinyNets(ModelAdapter):
    """Builds ``tiny:<width>``: an MLP with one hidden layer of that width (a stand-in for a model hub)."""

    def build(self, name: str, input_shape: tuple[int, ...], num_classes: int, kwargs: dict[str, Any],
              cache_dir: Path | None = None) -> nn.Module:
        """The MLP, shaped to the data."""
        return MLP(math.prod(input_shape), num_classes, (int(name.split(":")[1]),))


class MirroredDigits(DataSource):
    """scikit-learn's digits, mirrored left to right (a stand-in for a user's own data loader)."""

    def load(self, name: str, kwargs: dict[str, Any]) -> Any:
        """(x, y) arrays."""
        from sklearn import datasets

        d = datasets.load_digits()
        return (d.data.reshape(-1, 1, 8, 8)[..., ::-1] / 16.0).astype(np.float32), d.target
