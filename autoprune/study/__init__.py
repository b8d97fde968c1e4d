"""The search: the only package that imports optuna."""

from autoprune.study.baselines import baseline_targets
from autoprune.study.export import choose_trial, policy_from_trial
from autoprune.study.records import metric_sign
from autoprune.study.run import ProgressSink, run_search
from autoprune.study.runner import SearchOptions, SearchResult, front_table, prepare, study_user_attrs
from autoprune.study.storage import load_existing, make_storage

__all__ = [
    "ProgressSink",
    "SearchOptions",
    "SearchResult",
    "baseline_targets",
    "choose_trial",
    "front_table",
    "load_existing",
    "make_storage",
    "metric_sign",
    "policy_from_trial",
    "prepare",
    "run_search",
    "study_user_attrs",
]
