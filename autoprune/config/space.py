"""The search space: a validated YAML file describing model, data and what to search (no torch import).

:func:`autoprune.config.sampling.sample` turns one Optuna trial (or any object with ``suggest_float`` and
``suggest_categorical``, e.g. ``optuna.trial.FixedTrial``) of a space into a :class:`~autoprune.policy.Policy`.
"""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from autoprune.config.policy import Criterion, FineTune, Granularity, LrDecay, Schedule, check_criterion_name
from autoprune.config.specs import (
    BUILTIN_HEURISTICS,
    AnchorName,
    ConstraintSpec,
    DataSpec,
    EarlyStopSpec,
    FineTuneSpec,
    Heuristic,
    LadderSpec,
    LayerSpec,
    ModelSpec,
    RankBy,
    SamplerName,
    SensitivitySpec,
    SizeMetric,
    StreamSpec,
    Strict,
    TargetSpec,
    TaskSpec,
    TrainSpec,
    check_heuristic_name,
    check_sampler_name,
)
from autoprune.config.yamlfile import line_of, load_yaml_with_lines
from autoprune.errors import ConfigError

__all__ = ["BUILTIN_HEURISTICS", "ConstraintSpec", "DataSpec", "EarlyStopSpec", "FineTuneSpec", "Heuristic",
           "LadderSpec", "LayerSpec",
           "ModelSpec", "RankBy", "SamplerName", "SearchSpace", "SensitivitySpec", "SizeMetric", "StreamSpec",
           "TargetSpec", "TaskSpec", "TrainSpec", "check_heuristic_name"]

class SearchSpace(Strict):
    """A whole search space file (see ``search_spaces/template.yaml`` for every key)."""

    name: str
    model: ModelSpec
    data: DataSpec
    task: TaskSpec = TaskSpec()
    train: TrainSpec = TrainSpec()
    layers: LayerSpec = LayerSpec()
    criteria: list[Criterion] = Field(default_factory=lambda: list[Criterion](["magnitude"]), min_length=1)
    # SparseGPT's calibration inputs: the dense model's (one pass), or sequential: block by block from the earlier
    # blocks pruned uniformly at the candidate's target (the search's level databases, one per target, are built
    # that way and the exported policy says so: what it screened is what apply ships)
    calibration: Literal["dense", "sequential"] = "dense"
    granularity: Granularity = Granularity()
    schedules: list[Schedule] = Field(default_factory=lambda: [Schedule()], min_length=1)
    finetune: FineTuneSpec = FineTuneSpec()
    ladder: LadderSpec | None = None  # None: one rung, the short fine-tune (no production-fidelity scores)
    targets: TargetSpec = TargetSpec()
    size_metric: SizeMetric = "nonzeros"
    parametrization: Literal["projected", "independent"] = "projected"
    # the heuristic allocation the searched preferences are offsets around; a list makes it a searched choice
    # (each candidate picks one), so the space holds every listed heuristic at every recipe
    anchor: AnchorName | list[AnchorName] = "lamp"
    offset: float = Field(default=2.0, gt=0.0, le=8.0)  # preference offset range [-offset, offset]
    baselines: list[Heuristic] = Field(
        default_factory=lambda: list[Heuristic](["uniform", "global", "lamp", "erk", "sensitivity"]))
    sampler: SamplerName = "tpe"
    sampler_options: dict[str, Any] = Field(default_factory=dict)  # checked by the sampler's factory at setup
    trials: int = Field(default=60, ge=1)
    seed: int = 0
    constraints: ConstraintSpec = ConstraintSpec()
    early_stop: EarlyStopSpec = EarlyStopSpec()
    sensitivity: SensitivitySpec = SensitivitySpec()
    source: str = Field(default="", exclude=True)  # the file it came from (for error messages)

    @field_validator("criteria")
    @classmethod
    def _check_criteria(cls, v: list[str]) -> list[str]:
        return [check_criterion_name(c) for c in v]

    @field_validator("baselines")
    @classmethod
    def _check_baselines(cls, v: list[str]) -> list[str]:
        return [check_heuristic_name(h) for h in v]

    @field_validator("sampler")
    @classmethod
    def _check_sampler(cls, v: str) -> str:
        return check_sampler_name(v)

    @field_validator("anchor")
    @classmethod
    def _check_anchor(cls, v: str | list[str]) -> str | list[str]:
        for name in [v] if isinstance(v, str) else v:
            check_heuristic_name(name)
        return v

    @model_validator(mode="after")
    def _check_task(self) -> SearchSpace:
        if "sparsegpt" in self.criteria and self.granularity.kind not in ("unstructured", "nm"):
            raise ValueError(f"criterion sparsegpt chooses its mask while it updates the weights: granularity "
                             f"unstructured or nm, not {self.granularity.kind}")
        if self.task.kind == "causal_lm" and self.granularity.kind == "channel":
            raise ValueError("granularity.kind channel is not supported for causal_lm (prune the projections' "
                             "weights: unstructured or nm)")
        if self.sampler == "evolution" and (self.parametrization != "projected" or not self.targets.grid
                                            or self.granularity.kind == "nm"):
            raise ValueError("sampler evolution moves sparsity between units at each size of targets.grid: it needs "
                             "parametrization projected, a grid of targets and a granularity other than nm")
        if self.calibration == "sequential" and ("sparsegpt" not in self.criteria or not self.targets.grid):
            raise ValueError("calibration sequential is SparseGPT's, at each size of a grid: criteria must hold "
                             "sparsegpt and targets a grid")
        owl = "owl" in self.baselines or "owl" in self.anchors
        if owl and not {"wanda", "sparsegpt"} & set(self.criteria):
            raise ValueError("the owl heuristic reads the Wanda scores' outliers (activations on calibration data): "
                             "add wanda or sparsegpt to criteria")
        if self.task.kind == "regression" and any(self.finetune.distill):
            raise ValueError("finetune.distill matches the dense model's softened class / token distributions: a "
                             "regression task has no logits (leave distill at 0)")
        if self.constraints.min_accuracy is not None and self.task.kind != "classification":
            raise ValueError(f"constraints.min_accuracy is for classification; task '{self.task.kind}' has its own "
                             "primary metric (choose on it with export --min-metric/--max-metric)")
        return self

    @model_validator(mode="after")
    def _check_ladder(self) -> SearchSpace:
        if self.ladder is not None and "epochs" in self.finetune.model_fields_set:
            raise ValueError("finetune.epochs and ladder.epochs both given: with a ladder, the rungs' epochs "
                             "come from ladder.epochs (the last one is the production fine-tune)")
        if self.ladder is not None and self.ladder.tokens is not None and self.task.kind != "causal_lm":
            raise ValueError(f"ladder.tokens counts a language model's calibration tokens; task '{self.task.kind}' "
                             "ranks its rungs by fine-tune epochs (ladder.epochs or ladder.steps)")
        return self

    @property
    def anchors(self) -> list[str]:
        """The anchor heuristics, in the file's order (empty for ``none``); the first is the default one."""
        names = [self.anchor] if isinstance(self.anchor, str) else list(self.anchor)
        return [n for n in dict.fromkeys(names) if n != "none"]

    def with_step_budgets(self, n_train: int) -> SearchSpace:
        """Budgets given in optimizer steps (``ladder.steps``, ``finetune.steps``) as epochs of a train split of
        ``n_train`` examples (a step is one batch of ``finetune.batch_size``); unchanged when none are given."""
        per_epoch = max(1, math.ceil(n_train / self.finetune.batch_size))
        update: dict[str, Any] = {}
        if self.ladder is not None and self.ladder.steps is not None:
            update["ladder"] = self.ladder.model_copy(update={"epochs": [s / per_epoch for s in self.ladder.steps]})
        if self.finetune.steps is not None:
            epochs = [s / per_epoch for s in self.finetune.steps]
            update["finetune"] = self.finetune.model_copy(update={"epochs": epochs})
        return self.model_copy(update=update) if update else self

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        """Load and validate; errors name the file, the field and the line."""
        p = Path(path)
        data, lines = load_yaml_with_lines(p)
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping of keys at the top level")
        try:
            return cls.model_validate({**data, "source": str(p)})._resolve_paths(p.parent)
        except ValidationError as err:
            first = err.errors()[0]
            loc = tuple(first["loc"])
            line = line_of(lines, loc)
            where = ".".join(str(x) for x in loc) or "(root)"
            msg = first["msg"].replace("Value error, ", "")
            if first["type"] == "extra_forbidden":
                msg = "unknown key"
            at = f" (line {line})" if line else ""
            raise ConfigError(f"{p}: field '{where}'{at}: {msg}") from None

    def _resolve_paths(self, folder: Path) -> SearchSpace:
        """Relative data files and checkpoints are relative to the space file's folder, not the current one."""
        def resolved(name: str) -> str:
            return name if Path(name).is_absolute() else str(folder / name)

        update: dict[str, Any] = {}
        if self.data.name.endswith((".pt", ".pth", ".npz")):
            update["data"] = self.data.model_copy(update={"name": resolved(self.data.name)})
        if self.model.checkpoint:
            update["model"] = self.model.model_copy(update={"checkpoint": resolved(self.model.checkpoint)})
        return self.model_copy(update=update) if update else self

    def field_error(self, field_path: str, message: str) -> ConfigError:
        """A :class:`ConfigError` naming this file and a field (for checks that need the model)."""
        return ConfigError(f"{self.source or self.name}: field '{field_path}': {message}")

    def select_layers(self, candidates: list[str]) -> list[str]:
        """Apply include/exclude globs to the model's prunable FQNs; a pattern matching nothing is an error."""
        for key, patterns in (("include", self.layers.include), ("exclude", self.layers.exclude)):
            for pat in patterns:
                if not fnmatch.filter(candidates, pat):
                    raise self.field_error(f"layers.{key}", f"pattern '{pat}' matches no prunable layer "
                                           f"(layers: {', '.join(candidates)})")
        chosen = [c for c in candidates if any(fnmatch.fnmatchcase(c, p) for p in self.layers.include)]
        chosen = [c for c in chosen if not any(fnmatch.fnmatchcase(c, p) for p in self.layers.exclude)]
        if not chosen:
            raise self.field_error("layers", "include/exclude leave no layer to prune")
        return chosen

    def bounds_for(self, layers: list[str]) -> dict[str, tuple[float, float]]:
        """Per-layer [min, max] ratio; the first matching ``layers.bounds`` glob wins, default [0, 0.99]."""
        for pat in self.layers.bounds:
            if not fnmatch.filter(layers, pat):
                raise self.field_error("layers.bounds", f"pattern '{pat}' matches no selected layer")
        out: dict[str, tuple[float, float]] = {}
        for fqn in layers:
            match = next((b for p, b in self.layers.bounds.items() if fnmatch.fnmatchcase(fqn, p)), None)
            out[fqn] = match if match is not None else (0.0, 0.99)
        return out

    def finetune_recipe(self, epochs: float, lr_scale: float, decay: LrDecay = "constant",
                        distill: float = 0.0) -> FineTune:
        """The fine-tune recipe for a candidate (seeded with the space's seed, BN recalibrated as in the scan)."""
        return FineTune(epochs=epochs, lr=self.train.lr * lr_scale, batch_size=self.finetune.batch_size,
                        decay=decay, seed=self.seed, bn_batches=self.sensitivity.bn_batches, distill=distill,
                        temperature=self.finetune.temperature)

    def default_recipe(self) -> FineTune:
        """The recipe heuristics are scored with: the first choice of every list, at the last rung's epochs."""
        ft = self.finetune
        epochs = self.ladder.epochs[-1] if self.ladder is not None else ft.epochs[0]
        return self.finetune_recipe(epochs, ft.lr_scale[0], ft.decay[0], ft.distill[0])
