"""The search: the only package that imports optuna."""

from autoprune.config.events import ProgressSink
from autoprune.study.baselines import baseline_targets
from autoprune.study.choose import choose_trial, policy_from_trial
from autoprune.study.search import SearchResult, run_search
from autoprune.study.setup import SearchOptions, prepare
from autoprune.study.storage import load_existing, make_storage
from autoprune.study.trials import finished_count, front_table, metric_sign, study_user_attrs

__all__ = [
    "ProgressSink",
    "SearchOptions",
    "SearchResult",
    "baseline_targets",
    "choose_trial",
    "finished_count",
    "front_table",
    "load_existing",
    "make_storage",
    "metric_sign",
    "policy_from_trial",
    "prepare",
    "run_search",
    "study_user_attrs",
]
