"""The parts of a search space: model, data, task, training, layers, targets, fine-tune recipe choices, ladder,
constraints, early stop, sensitivity scan (plain pydantic data, no torch import; assembled by
:class:`autoprune.config.space.SearchSpace`)."""

from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from autoprune.config.policy import LrDecay, check_registered_name

__all__ = ["BUILTIN_HEURISTICS", "AnchorName", "ConstraintSpec", "DataSpec", "EarlyStopSpec", "FineTuneSpec",
           "Heuristic", "LadderSpec", "LayerSpec", "ModelSpec", "RankBy", "SamplerName", "SensitivitySpec",
           "SizeMetric", "StreamSpec", "Strict", "TargetSpec", "TaskSpec", "TrainSpec", "check_heuristic_name",
           "check_sampler_name"]

SizeMetric = Literal["nonzeros", "bytes", "flops", "latency"]
RankBy = Literal["metric", "val_loss", "train_loss", "kl_to_dense"]
BUILTIN_SAMPLERS = ("tpe", "nsga2", "random", "gp", "rl", "evolution")
# a sampler: a built-in name, one registered with @register_sampler, or package.module:Class of a user's
# SamplerFactory subclass (see autoprune.study.samplers); checked against the registry at setup
SamplerName = str
BUILTIN_HEURISTICS = ("uniform", "global", "lamp", "erk", "sensitivity", "owl", "alpha")
# a heuristic allocation: a built-in name, one registered with @register_allocation, or package.module:Class of a
# user's AllocationRule subclass (see autoprune.pruning.heuristics); checked against the registry at setup
Heuristic = str
AnchorName = str  # a Heuristic, or none


def check_sampler_name(name: str) -> str:
    """A sampler's spelling: a registered name or ``package.module:Class`` (the registry decides at setup)."""
    return check_registered_name(name, "sampler", BUILTIN_SAMPLERS, "SamplerFactory")


def check_heuristic_name(name: str) -> str:
    """A heuristic's spelling: a registered name or ``package.module:Class`` (the registry decides at setup)."""
    return check_registered_name(name, "heuristic", BUILTIN_HEURISTICS, "AllocationRule")


class Strict(BaseModel):
    """Frozen, and an unknown key is an error (a typo is never silently ignored)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSpec(Strict):
    """Which network: a built-in name (``digits_cnn``) or ``package.module:callable``; or any name a user's model
    adapter builds (``adapter``: its registered name or ``package.module:Class``)."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None  # state_dict loaded with torch.load(weights_only=True)
    adapter: str | None = None

    @field_validator("adapter")
    @classmethod
    def _check_adapter(cls, v: str | None) -> str | None:
        return v if v is None else check_registered_name(v, "model adapter", ("huggingface", "torchvision", "zoo"),
                                                         "ModelAdapter")


class StreamSpec(Strict):
    """How much of a torch ``Dataset``/``IterableDataset`` a search reads (examples per split; the rest of the
    stream is never read, so memory does not grow with its length)."""

    train: int = Field(default=20000, ge=10)
    val: int = Field(default=2000, ge=1)
    test: int = Field(default=2000, ge=1)


class DataSpec(Strict):
    """Which data: ``digits``/``breast_cancer``/``wine``, a ``.pt``/``.npz`` file, ``module:callable``
    or ``torchvision:CIFAR10?root=...``; split once with a fixed seed into train/val/test."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    val_fraction: float = Field(default=0.15, gt=0.0, lt=0.5)
    test_fraction: float = Field(default=0.15, gt=0.0, lt=0.5)
    split_seed: int = 0
    # x holds token ids (e.g. for a Hugging Face sequence classifier): kept as int64, never scaled
    tokens: bool = False
    stream: StreamSpec = Field(default_factory=lambda: StreamSpec())  # used when the callable returns a Dataset
    source: str | None = None  # a user's DataSource (registered name or package.module:Class) that reads ``name``

    @field_validator("source")
    @classmethod
    def _check_source(cls, v: str | None) -> str | None:
        return v if v is None else check_registered_name(v, "data source", ("sklearn", "file", "callable"),
                                                         "DataSource")


class TaskSpec(Strict):
    """How the model is trained and scored (see autoprune.tasks): ``classification`` (accuracy ↑),
    ``regression`` (MSE ↓), or ``package.module:ClassName`` of a ``Task`` subclass; ``options`` are its
    keyword arguments."""

    kind: str = "classification"
    options: dict[str, Any] = Field(default_factory=dict)


class TrainSpec(Strict):
    """Dense-baseline training, used once when the model has no checkpoint (then cached in runs/)."""

    epochs: int = Field(default=30, ge=1)
    lr: float = Field(default=1e-3, gt=0.0)
    batch_size: int = Field(default=64, ge=1)
    weight_decay: float = Field(default=0.0, ge=0.0)


class LayerSpec(Strict):
    """Which layers are prunable (globs on fully qualified names) and per-layer ratio bounds."""

    include: list[str] = Field(default_factory=lambda: ["*"])
    exclude: list[str] = Field(default_factory=list)
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)  # glob -> [min, max] ratio
    # what shares one searched preference: each unit (layer), each block (the name up to its first numeric part,
    # e.g. one ratio per decoder block), or each type (the name after it, e.g. every block's q_proj together)
    group: Literal["unit", "block", "type"] = "unit"

    @field_validator("bounds")
    @classmethod
    def _check_bounds(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for pattern, (lo, hi) in v.items():
            if not (0.0 <= lo <= hi < 1.0):
                raise ValueError(f"bounds for '{pattern}': need 0 <= min <= max < 1, got [{lo}, {hi}]")
        return v


class TargetSpec(Strict):
    """Global target sparsity: a grid of sizes the user cares about, or a continuous range."""

    grid: list[float] | None = Field(default_factory=lambda: [0.9, 0.95, 0.97])
    range: tuple[float, float] | None = None
    # how a grid's trials are shared: equal (each size the same number), or moving (after each size's random start,
    # the next trial goes to the size whose best production score improved most recently: where the front moves)
    budget: Literal["equal", "moving"] = "equal"

    @model_validator(mode="after")
    def _check(self) -> TargetSpec:
        values = list(self.grid or []) + list(self.range or [])
        if not values:
            raise ValueError("give 'grid' or 'range'")
        for v in values:
            if not 0.0 <= v < 1.0:
                raise ValueError(f"target sparsity {v} outside [0, 1)")
        if self.budget == "moving" and not self.grid:
            raise ValueError("budget moving shares the trials of a grid of targets: give 'grid'")
        return self


class FineTuneSpec(Strict):
    """The fine-tune recipe choices: epochs (without a ladder), LR scale (× train.lr) and LR decay.

    The first choice of each list is the space's default recipe: enqueued heuristics use it.
    """

    epochs: list[float] = Field(default_factory=lambda: [2.0], min_length=1)
    steps: list[int] | None = None  # or optimizer steps (turned into epochs of the train split when it is loaded)
    lr_scale: list[float] = Field(default_factory=lambda: [0.3], min_length=1)
    decay: list[LrDecay] = Field(default_factory=lambda: list[LrDecay](["constant"]), min_length=1)
    # distillation weight(s) from the dense model (0: none; a list is a searched choice), its temperature
    distill: list[float] = Field(default_factory=lambda: [0.0], min_length=1)
    temperature: float = Field(default=2.0, gt=0.0)
    batch_size: int = Field(default=64, ge=1)

    @field_validator("epochs")
    @classmethod
    def _check_epochs(cls, v: list[float]) -> list[float]:
        if any(e < 0 for e in v):
            raise ValueError(f"epochs must be ≥ 0, got {v}")
        return v

    @model_validator(mode="after")
    def _check_steps(self) -> FineTuneSpec:
        if self.steps is not None and "epochs" in self.model_fields_set:
            raise ValueError("finetune: give epochs or steps, not both")
        if self.steps is not None and any(x < 0 for x in self.steps):
            raise ValueError(f"finetune.steps must be ≥ 0, got {self.steps}")
        return self

    @field_validator("distill")
    @classmethod
    def _check_distill(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= x <= 1.0 for x in v):
            raise ValueError(f"distill weights must lie in [0, 1], got {v}")
        return v

    @field_validator("lr_scale")
    @classmethod
    def _check_lr(cls, v: list[float]) -> list[float]:
        if any(x <= 0 for x in v):
            raise ValueError(f"lr_scale must be > 0, got {v}")
        return v


class LadderSpec(Strict):
    """The fidelity ladder: each candidate climbs rungs of growing fine-tune budget; per target, only the best
    ``keep`` fraction of a rung's scores climbs to the next (asynchronous successive halving). The last rung is
    the production fine-tune: exactly what ``apply`` does with an exported policy."""

    # a token ladder (language models): calibration tokens on which each rung below the last measures the KL
    # divergence to the dense model, and nothing else; those rungs prune without fine-tuning (epochs 0) and rank by
    # kl_to_dense. E.g. epochs [0, 0, 0], tokens [512, 2048]: every candidate is screened on 512 tokens, the best
    # third re-scored on 2048, the best third of those measured on the validation split (the last rung)
    tokens: list[int] | None = None  # (declared before epochs: their check reads it)
    epochs: list[float] = Field(default_factory=lambda: [0.0, 2.0, 20.0], min_length=2)  # fine-tune epochs per rung
    # or optimizer steps per rung (batches of finetune.batch_size), for data sets where an epoch is too long;
    # turned into (fractional) epochs of the train split when the data is loaded
    steps: list[int] | None = None
    keep: float = Field(default=0.34, gt=0.0, le=1.0)  # fraction of each rung promoted (per target)
    min_peers: int = Field(default=4, ge=1)  # below this many scores at a rung and target, everyone climbs
    # warm start across targets: each size's best production candidate is also tried at the other sizes (as it is,
    # and with zero offsets: its anchor's own allocation under its recipe); see autoprune.study.transfer
    transfer: bool = False
    # compare like with like: a candidate competes at each rung only with candidates of its own schedule (a cubic
    # 3-step schedule squeezed into a short rung's few epochs ranks below one-shot there, whatever it does later)
    stratify: bool = False
    # the recipe race (0: off): every recipe of the space on the best anchor's own allocation at the largest target,
    # straight to the last rung, then the best ``race`` of them at every other target (autoprune.study.race): the
    # recipe is chosen by the production fine-tune, not by the short rungs that rank recipes badly
    race: int = Field(default=0, ge=0)
    # what ranks candidates at each rung below the last (one name for all, or one per rung): the rung's validation
    # metric, its validation or training loss, or the KL divergence of its outputs to the dense model's.
    # Default: kl_to_dense on a rung without fine-tune, train_loss after one (they predicted the production
    # score best in README's rank-correlation table; the accuracy of a lower rung predicted it worst)
    rank_by: RankBy | list[RankBy] | None = None
    # how a candidate climbs from a rung below the last: "fraction" (asynchronous successive halving: among the best
    # ``keep`` of its size, within a quota of climbers) or "elitist" (only when it ranks at least as well there as
    # the incumbent, the best candidate of its size on the last rung; no late promotions). Elitist is EvoPress's
    # staged selection for a (1+1) evolution: under the fraction rule the quota, not the score, decides which of an
    # improving sampler's near-best children climb, so its parent changes only as often as the quota lets one through
    promote: Literal["fraction", "elitist"] = "fraction"
    # which training windows the token rungs read: "calibration" (the first ones: the text the pruner's level weights
    # were fitted on, SparseGPT's and Wanda's 32 calibration windows) or "held_out" (the windows after those: text
    # the level weights never saw, so a rung's KL measures what the pruned model does on new text, as validation does)
    tokens_from: Literal["calibration", "held_out"] = "calibration"

    def rank_field(self, rung: int) -> RankBy:
        """The measurement that ranks candidates at ``rung`` (below the last)."""
        if self.rank_by is None:
            return "kl_to_dense" if self.epochs[rung] == 0 else "train_loss"
        return self.rank_by if isinstance(self.rank_by, str) else self.rank_by[rung]

    @model_validator(mode="before")
    @classmethod
    def _steps_or_epochs(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("steps") is not None:
            if "epochs" in data:
                raise ValueError("ladder: give epochs or steps, not both")
            if any(int(x) < 0 for x in data["steps"]):
                raise ValueError(f"ladder.steps must be ≥ 0, got {data['steps']}")
            data = {**data, "epochs": [float(x) for x in data["steps"]]}  # placeholders until the data is loaded
        return data

    @model_validator(mode="after")
    def _check_rank_by(self) -> LadderSpec:
        below = len(self.epochs) - 1
        if isinstance(self.rank_by, list) and len(self.rank_by) != below:
            raise ValueError(f"rank_by: give one name, or one per rung below the last ({below}), got {self.rank_by}")
        for r in range(below):
            if self.rank_field(r) == "train_loss" and self.epochs[r] == 0:
                raise ValueError(f"rank_by: rung {r} has no fine-tune, so no training loss")
        return self

    @field_validator("epochs")
    @classmethod
    def _check_epochs(cls, v: list[float], info: ValidationInfo) -> list[float]:
        # a token ladder's rungs grow in tokens (checked in _check_rungs); a fine-tune ladder's in epochs
        if info.data.get("tokens") is None and (any(b <= a for a, b in itertools.pairwise(v)) or v[0] < 0):
            raise ValueError(f"rung epochs must be ≥ 0 and strictly increasing, got {v}")
        return v

    @model_validator(mode="after")
    def _check_rungs(self) -> LadderSpec:
        v, below = self.epochs, len(self.epochs) - 1
        if self.tokens is None:
            return self
        if len(self.tokens) != below or any(t <= 0 for t in self.tokens) or self.tokens != sorted(set(self.tokens)):
            raise ValueError(f"ladder.tokens: one positive, strictly increasing token count per rung below the last "
                             f"({below}), got {self.tokens}")
        if any(e != 0 for e in v[:below]) or v[-1] < 0:
            raise ValueError(f"ladder.tokens: the token rungs measure without a fine-tune: their epochs must be 0, "
                             f"got {v}")
        if any(self.rank_field(r) != "kl_to_dense" for r in range(below)):
            raise ValueError("ladder.tokens: the token rungs measure only the KL divergence: rank_by kl_to_dense")
        return self


class ConstraintSpec(Strict):
    """Optional feasibility limits (Optuna constraints): max size fraction, min validation accuracy."""

    max_size: float | None = Field(default=None, gt=0.0, le=1.0)
    min_accuracy: float | None = Field(default=None, ge=0.0, le=1.0)


class EarlyStopSpec(Strict):
    """Stop a candidate after its first fine-tune epoch when it trails the front by more than ``margin``."""

    enabled: bool = True
    margin: float = Field(default=0.15, ge=0.0, le=1.0)
    min_trials: int = Field(default=8, ge=0)


class SensitivitySpec(Strict):
    """Grid of ratios for the per-layer sensitivity scan."""

    ratios: list[float] = Field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99])
    bn_batches: int = Field(default=4, ge=0)

    @model_validator(mode="after")
    def _check(self) -> SensitivitySpec:
        for r in self.ratios:
            if not 0.0 <= r < 1.0:
                raise ValueError(f"ratio {r} outside [0, 1)")
        return self
