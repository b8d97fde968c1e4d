"""The pruning policy: plain, frozen, JSON-serialisable data (no torch import).

A policy says *how much* to prune each layer (``sparsity: {fqn: ratio}``) and *how* (criterion,
granularity, schedule, fine-tune recipe). It is what the search produces and what ``apply`` consumes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autoprune.errors import PolicyError, first_problem
from autoprune.files import write_atomic

__all__ = [
    "BUILTIN_CRITERIA",
    "BUILTIN_GRANULARITIES",
    "BUILTIN_SCHEDULES",
    "SCHEMA_VERSION",
    "Criterion",
    "FineTune",
    "Granularity",
    "LrDecay",
    "Policy",
    "Schedule",
    "check_criterion_name",
    "check_registered_name",
]

SCHEMA_VERSION = 1

BUILTIN_CRITERIA = ("magnitude", "taylor", "random", "wanda", "sparsegpt", "ria")
# a registered criterion's name (see autoprune.pruning.criteria.Criterion: the built-ins above, or one registered
# with @register_criterion) or ``package.module:Class`` of a user's Criterion subclass; checked against the
# registry where torch is loaded (a search's setup, apply)
Criterion = str
_REGISTERED_NAME = re.compile(r"^[A-Za-z_]\w*$|^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def check_registered_name(name: str, kind: str, examples: tuple[str, ...], base: str) -> str:
    """The spelling of an extension's name: a registered name or ``package.module:Class`` (whether it is
    registered, or imports, is checked where torch is loaded)."""
    if not _REGISTERED_NAME.match(name):
        raise ValueError(f"{kind} '{name}': a registered name ({', '.join(examples)}, ...) or package.module:Class "
                         f"of a {base} subclass")
    return name


def check_criterion_name(name: str) -> str:
    """A criterion name's spelling (see :func:`check_registered_name`)."""
    return check_registered_name(name, "criterion", BUILTIN_CRITERIA, "Criterion")


BUILTIN_GRANULARITIES = ("unstructured", "channel", "nm")
LrDecay = Literal["constant", "cosine"]


class Granularity(BaseModel):
    """Which weights are removed together: single weights, whole output channels, N of every M, or a user's
    ``PruningGranularity`` (registered name or ``package.module:Class``, reading ``options``; see
    autoprune.pruning.granularities)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: str = "unstructured"
    n: int = 2  # N:M only – weights kept per group
    m: int = 4  # N:M only – group size
    options: dict[str, Any] = Field(default_factory=dict)  # a user's granularity's own options

    @field_validator("kind")
    @classmethod
    def _check_kind(cls, v: str) -> str:
        return check_registered_name(v, "granularity", BUILTIN_GRANULARITIES, "PruningGranularity")

    @model_validator(mode="after")
    def _check_nm(self) -> Granularity:
        if self.kind == "nm" and not (0 < self.n < self.m):
            raise ValueError(f"N:M needs 0 < N < M, got {self.n}:{self.m}")
        return self

    @property
    def label(self) -> str:
        """Short human label, e.g. ``2:4``, ``channel`` or a user class's name."""
        return f"{self.n}:{self.m}" if self.kind == "nm" else self.kind.rpartition(":")[2]


BUILTIN_SCHEDULES = ("oneshot", "iterative", "linear")


class Schedule(BaseModel):
    """How the final ratios are reached: at once (``oneshot``), in ``steps`` cubic increments (``iterative``, Zhu
    & Gupta), in equal ones (``linear``), or by a user's ``PruningSchedule`` (registered name or
    ``package.module:Class``; see autoprune.pruning.schedules)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: str = "oneshot"
    steps: int = Field(default=1, ge=1, le=100)

    @field_validator("kind")
    @classmethod
    def _check_kind(cls, v: str) -> str:
        return check_registered_name(v, "schedule", BUILTIN_SCHEDULES, "PruningSchedule")

    @property
    def label(self) -> str:
        """Short human label, e.g. ``oneshot``, ``cubic×3`` or ``linear×4``."""
        if self.kind == "oneshot":
            return "oneshot"
        return f"{'cubic' if self.kind == 'iterative' else self.kind.rpartition(':')[2]}×{self.steps}"


class FineTune(BaseModel):
    """Fine-tune recipe applied after pruning (the search uses a short one, ``apply`` a longer one)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    epochs: float = Field(default=2.0, ge=0.0)
    lr: float = Field(default=3e-4, gt=0.0)
    batch_size: int = Field(default=64, ge=1)
    decay: LrDecay = "constant"  # LR over the whole fine-tune: constant, or cosine from ``lr`` to 0
    seed: int = 0  # seeds the batch order and any random criterion: the same seed reproduces the same model
    bn_batches: int = Field(default=4, ge=0)  # BatchNorm recalibration batches after the fine-tune
    # knowledge distillation from the dense model: loss = (1 − distill)·task loss + distill·T²·KL(dense ‖ pruned)
    # on logits softened by the temperature T (Hinton et al. 2015); 0 = the task's loss alone
    distill: float = Field(default=0.0, ge=0.0, le=1.0)
    temperature: float = Field(default=2.0, gt=0.0)


class Policy(BaseModel):
    """A complete, versioned pruning policy keyed by fully qualified module names."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_version: int = SCHEMA_VERSION
    model: str = ""
    fingerprint: str = ""  # architecture fingerprint: hash of prunable layer FQNs + weight shapes
    dense_key: str = ""  # the exact dense model searched on (checkpoint SHA-256 or training cache key)
    task: str = "classification"  # the task it was scored with (autoprune.tasks), and the task's options
    task_options: dict[str, Any] = Field(default_factory=dict)
    shapes: dict[str, list[int]] = Field(default_factory=dict)  # every prunable layer's weight shape, by FQN
    criterion: Criterion = "magnitude"
    # SparseGPT's calibration inputs: the dense model's for every unit (what its level database stores), or block
    # by block the already-pruned model's (the paper's; one calibration pass per block)
    calibration: Literal["dense", "sequential"] = "dense"
    # with sequential calibration: every block's inputs from the earlier blocks pruned uniformly at this ratio
    # (a reference the search's sequential level database was built at, so what it screened is what ships); None:
    # from the earlier blocks pruned at this policy's own ratios
    calibration_reference: float | None = Field(default=None, gt=0.0, lt=1.0)
    granularity: Granularity = Granularity()
    schedule: Schedule = Schedule()
    finetune: FineTune = FineTune()
    sparsity: dict[str, float] = Field(default_factory=dict)
    expected: dict[str, float] = Field(default_factory=dict)  # e.g. accuracy, size at export time
    provenance: dict[str, str] = Field(default_factory=dict)

    @field_validator("schema_version")
    @classmethod
    def _check_version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {v} (this autoprune reads {SCHEMA_VERSION})")
        return v

    @field_validator("criterion")
    @classmethod
    def _check_criterion(cls, v: str) -> str:
        return check_criterion_name(v)

    @field_validator("sparsity")
    @classmethod
    def _check_ratios(cls, v: dict[str, float]) -> dict[str, float]:
        for fqn, ratio in v.items():
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"layer '{fqn}': ratio {ratio} outside [0, 1)")
        return dict(sorted(v.items()))

    def to_json(self) -> str:
        """Serialise in the fields' order (``schema_version`` first; stable, readable diffs); N:M's ``n``/``m``
        are left out of other granularities, where they mean nothing, and empty ``options`` everywhere."""
        data = self.model_dump(mode="json")
        if self.granularity.kind != "nm":
            data["granularity"] = {"kind": self.granularity.kind, "options": self.granularity.options}
        if not self.granularity.options:
            del data["granularity"]["options"]
        if self.calibration_reference is None:
            del data["calibration_reference"]
        return json.dumps(data, indent=2) + "\n"

    def ratio_recipes(self) -> dict[str, Any]:
        """The per-layer ratios in the forms other tools take: torch-pruning's ``pruning_ratio_dict`` (by FQN), and
        a ``{"module regex": sparsity}`` recipe with the names the model itself uses (a Hugging Face model's,
        without autoprune's ``hf.`` wrapper prefix), as LLM compression tools take it."""
        def plain(fqn: str) -> str:
            return fqn.removeprefix("hf.")

        return {"pruning_ratio_dict": dict(self.sparsity),
                "recipe": {"^" + re.escape(plain(f)) + "$": r for f, r in self.sparsity.items()},
                "criterion": self.criterion, "granularity": self.granularity.label}

    def save(self, path: str | Path) -> None:
        """Write atomically: a temp file in the same folder, then rename (no partial file on error)."""
        write_atomic(Path(path), self.to_json().encode())

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "policy") -> Policy:
        """Validate a dict; raise :class:`PolicyError` naming the source and the field."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            where, msg = first_problem(err, "(root)")
            raise PolicyError(f"{source}: field '{where}': {msg}") from None

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read and validate a policy JSON file."""
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise PolicyError(f"{p}: file not found") from None
        except json.JSONDecodeError as err:
            raise PolicyError(f"{p}: not valid JSON (line {err.lineno}: {err.msg})") from None
        if not isinstance(data, dict):
            raise PolicyError(f"{p}: expected a JSON object")
        return cls.from_dict(data, source=str(p))
