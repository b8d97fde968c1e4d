"""The front: a point one weight smaller but less accurate is not on it (size tolerance)."""

from __future__ import annotations

from pathlib import Path

import optuna

from autoprune.config.pareto import SIZE_TOLERANCE, nondominated
from autoprune.study.trials import front_trials


def test_size_tolerance_drops_a_worse_point_one_weight_smaller() -> None:
    pts = [(0.98, 1817 / 53000), (0.80, 1816 / 53000), (0.99, 0.10), (0.5, 0.01)]
    assert nondominated(pts) == [0, 1, 2, 3]  # without a tolerance the hair-smaller point survives
    assert nondominated(pts, SIZE_TOLERANCE) == [0, 2, 3]
    assert nondominated([(0.9, 0.1), (0.9, 0.1)], SIZE_TOLERANCE) == [0]  # duplicates: the first is kept


def test_front_trials_applies_the_tolerance_and_constraints(tmp_path: Path) -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, size in [(0.98, 0.034282), (0.80, 0.034263), (0.70, 0.01)]:
        study.add_trial(optuna.trial.create_trial(values=[acc, size]))
    study.add_trial(optuna.trial.create_trial(values=[0.99, 0.005], system_attrs={"constraints": [0.5]}))
    assert [t.values[0] for t in study.best_trials] == [0.98, 0.80, 0.70]  # Optuna keeps the hair-smaller trial
    assert [t.values[0] for t in front_trials(study)] == [0.98, 0.70]


def test_export_choices_follow_validation_not_test() -> None:
    from autoprune.study.choose import choose_trial

    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, size in [(0.95, 0.10), (0.90, 0.05), (0.80, 0.02)]:
        study.add_trial(optuna.trial.create_trial(values=[acc, size]))
    # test accuracies that disagree with validation: the smallest point looks best on test
    for number, test_acc in [(0, 0.70), (1, 0.75), (2, 0.99)]:
        study.set_user_attr(f"test/{number}", {"accuracy": test_acc})
    assert choose_trial(study, max_size=0.2).number == 0  # most accurate on validation, not on test
    assert choose_trial(study, min_accuracy=0.85).number == 1  # 0.99 test of trial 2 does not qualify it
    assert choose_trial(study, min_accuracy=0.95).number == 0
