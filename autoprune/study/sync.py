"""Rebuild plain records of a stored study (for ``autoprune sync``)."""

from __future__ import annotations

from typing import Any

import optuna

from autoprune.config.events import StudyInfo, TrialRecord
from autoprune.study.attrs import DENSE_TEST, DENSE_VAL
from autoprune.study.trials import front_trials, to_record

__all__ = ["records_and_info"]


def records_and_info(study: optuna.Study, storage: str) -> tuple[list[TrialRecord], StudyInfo, dict[str, Any]]:
    """Records with Pareto flags and stored test metrics, the study description and a small summary."""
    attrs = study.user_attrs  # written by run_search when it created the study
    front = {t.number for t in front_trials(study)}
    finished = [t for t in study.trials if t.state.is_finished()]
    records = [to_record(t, t.number in front, attrs.get(f"test/{t.number}")) for t in finished]
    info = StudyInfo(study_name=study.study_name, storage=storage, space_yaml=str(attrs.get("space_yaml", "")),
                     space_name=study.study_name, sampler=str(attrs.get("sampler", "")),
                     size_metric=str(attrs.get("size_metric", "nonzeros")),
                     dense_val=dict(attrs.get(DENSE_VAL, {})), dense_test=dict(attrs.get(DENSE_TEST, {})))
    summary = {"trials": len(records), "complete": sum(r.state == "COMPLETE" for r in records)}
    return records, info, summary
