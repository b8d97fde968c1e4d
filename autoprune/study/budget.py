"""A compute budget in fine-tune epochs: the search stops starting trials once its study has spent it.

Trials are a poor budget unit on a ladder: a candidate stopped on rung 0 costs nothing to fine-tune, one that
reaches production costs the whole fine-tune. A user comparing the search with a heuristic grid-searched over
its recipes (``<h>_tuned`` in ``autoprune bench``) wants both to spend the same epochs; ``--max-epochs`` is that
budget. It is study-wide, like the journal: a resumed search counts what the study already spent, so rerunning
the same command after the budget is met adds nothing. The last trial may overshoot by at most its own epochs
(a trial is never cut off half-way: its score would be of another fidelity).
"""

from __future__ import annotations

import optuna

from autoprune.config.policy import Policy
from autoprune.config.space import SearchSpace
from autoprune.study.ladder import compute_spent
from autoprune.study.trials import FINISHED, policy_json

__all__ = ["EpochBudget", "epochs_spent"]


def epochs_spent(study: optuna.Study, space: SearchSpace) -> float:
    """Fine-tune epochs the study's finished trials spent: every ladder rung they ran, or (without a ladder)
    each evaluated trial's policy epochs."""
    trials = study.get_trials(deepcopy=False, states=FINISHED)
    if space.ladder is not None:
        return compute_spent((t.user_attrs for t in trials), len(space.ladder.epochs))["finetune_epochs"]
    texts = (policy_json(t) for t in trials)
    return sum(Policy.model_validate_json(text).finetune.epochs for text in texts if text is not None)


class EpochBudget:
    """An Optuna trial callback that stops the study's ``optimize`` loop once ``max_epochs`` are spent."""

    def __init__(self, space: SearchSpace, max_epochs: float | None) -> None:
        self.space = space
        self.max_epochs = max_epochs
        self.reached = False

    def exhausted(self, study: optuna.Study) -> bool:
        """Whether the study has spent its budget (never, without one)."""
        if self.max_epochs is None:
            return False
        self.reached = self.reached or epochs_spent(study, self.space) >= self.max_epochs - 1e-9
        return self.reached

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """After each trial: stop this process's loop when the budget is spent."""
        if self.exhausted(study):
            study.stop()
