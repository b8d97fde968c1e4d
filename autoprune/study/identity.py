"""What defines a study, so that a study name reused with another space is refused instead of silently mixed.

The fingerprint has named parts (model, data, task, layers, searched distributions, targets, size metric, ladder); the
study stores the hash of each. Resuming with a space whose parts differ raises one line naming the parts.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, distribution_to_json

from autoprune.config.space import SearchSpace, StreamSpec
from autoprune.errors import ConfigError

__all__ = ["ATTR", "check_study_parts", "refuse_other_parts", "study_parts"]

ATTR = "fingerprint"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def study_parts(space: SearchSpace, layers: dict[str, int], distributions: dict[str, BaseDistribution]
                ) -> dict[str, str]:
    """Hash of each part that defines what a trial's values mean."""
    ladder = space.ladder
    return {
        "model": _digest([space.model.model_dump(), space.train.model_dump()]),
        # (default stream budgets are left out: studies made before they existed keep their fingerprint)
        "data": _digest(space.data.model_dump(exclude={"stream"} if space.data.stream == StreamSpec() else None)),
        "task": _digest(space.task.model_dump()),
        "layers": _digest([layers, space.granularity.model_dump()]),
        "searched distributions": _digest({k: distribution_to_json(d) for k, d in distributions.items()}),
        "targets": _digest(space.targets.model_dump()),
        "size metric": _digest(space.size_metric),
        # (a token ladder adds its token counts; other ladders keep the fingerprint they had before tokens existed)
        "ladder": _digest(None if ladder is None else [ladder.epochs, ladder.rank_by]
                          + ([ladder.tokens] if ladder.tokens is not None else [])),
    }


def check_study_parts(study: optuna.Study, parts: dict[str, str], space: SearchSpace) -> None:
    """Store the parts in a new study; refuse (one line) a study created with other parts."""
    if study.user_attrs.get(ATTR) is None:  # a new study (or one from before fingerprints: nothing to compare with)
        study.set_user_attr(ATTR, parts)
        return
    refuse_other_parts(study, parts, space)


def refuse_other_parts(study: optuna.Study, parts: dict[str, str], space: SearchSpace) -> None:
    """Raise one line naming the parts in which ``study`` was created differently (nothing stored: no check)."""
    stored = study.user_attrs.get(ATTR) or {}
    differ = [k for k, v in parts.items() if k in stored and stored[k] != v]  # (parts added later: not compared)
    if differ:
        raise ConfigError(f"{space.source or space.name}: study '{study.study_name}' was created with another "
                          f"{', '.join(differ)}; its trials would be mixed with these. Use --study NEW (or the "
                          f"original space file)")
