"""A user's own criterion, allocation rule, schedule, granularity, sampler, model adapter and data source, named
``userpkg.extensions:...`` in a space."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from autoprune.models.adapters import ModelAdapter
from autoprune.models.layers import weight_of
from autoprune.models.zoo import MLP
from autoprune.pruning.criteria import Criterion
from autoprune.pruning.granularities import PruningGranularity
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


class BlockOptions(BaseModel):
    """The option of :class:`Blocks`: the side of its square blocks."""

    model_config = ConfigDict(extra="forbid")
    size: int = Field(default=2, ge=1)


class Blocks(PruningGranularity):
    """Square blocks of ``size`` × ``size`` weights of the (out, in) view, removed together by their summed score
    (block sparsity; partial blocks at the edges count as blocks)."""

    options_model = BlockOptions

    def mask(self, score: torch.Tensor, ratio: float, per_row: bool) -> torch.Tensor:
        """The ``round(ratio · blocks)`` lowest-scoring blocks removed."""
        s = self.options.size
        rows = score.flatten(1)
        r, c = rows.shape
        padded = nn.functional.pad(rows, (0, -c % s, 0, -r % s))
        blocks = padded.reshape(padded.shape[0] // s, s, padded.shape[1] // s, s).sum((1, 3))
        keep = torch.ones(blocks.numel(), dtype=score.dtype)
        k = round(ratio * blocks.numel())
        if k > 0:
            keep[torch.topk(blocks.flatten(), k, largest=False).indices] = 0.0
        full = keep.view_as(blocks).repeat_interleave(s, 0).repeat_interleave(s, 1)[:r, :c]
        return full.reshape(score.shape).contiguous()


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
