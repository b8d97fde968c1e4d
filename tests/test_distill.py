"""Knowledge distillation from the dense model in the fine-tune (``finetune.distill``)."""

from __future__ import annotations

import copy

import optuna
import pytest
import torch
from pydantic import ValidationError

from autoprune.config.policy import FineTune, Policy
from autoprune.config.sampling import SampleContext, sample
from autoprune.config.space import SearchSpace
from autoprune.models.zoo import MLP
from autoprune.pruning.evaluate import prune_and_finetune
from autoprune.tasks.data import Split, Splits
from autoprune.tasks.training import distillation_loss


def test_distillation_loss_is_zero_on_the_teacher_and_the_scaled_kl_otherwise() -> None:
    gen = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(4, 7, 10, generator=gen), torch.randn(4, 7, 10, generator=gen)
    assert float(distillation_loss(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)
    p = torch.softmax(teacher / 2.0, -1)
    manual = (p * (p.log() - torch.log_softmax(student / 2.0, -1))).sum(-1).mean() * 4.0  # per distribution
    assert float(distillation_loss(student, teacher, 2.0)) == pytest.approx(float(manual), rel=1e-5)


def _splits(labels_seed: int | None = None) -> Splits:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 12, generator=gen)
    y = (x[:, 0] > 0).long()
    if labels_seed is not None:  # the same inputs, other labels
        y = torch.randint(0, 2, (128,), generator=torch.Generator().manual_seed(labels_seed))
    return Splits("t", Split(x[:96], y[:96]), Split(x[96:], y[96:]), Split(x[96:], y[96:]), 2, "t")


def _finetuned(distill: float, labels_seed: int | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    dense = MLP(12, 2, (16,))
    model = copy.deepcopy(dense)
    policy = Policy(sparsity={"net.1": 0.5, "net.3": 0.5},
                    finetune=FineTune(epochs=2, lr=1e-2, batch_size=32, distill=distill))
    prune_and_finetune(model, policy, _splits(labels_seed), seed=0)
    return model


def test_full_distillation_learns_from_the_dense_model_alone_and_a_blend_from_both() -> None:
    x = _splits().val.x
    pure = [_finetuned(1.0, labels)(x) for labels in (None, 1, 2)]
    assert torch.equal(pure[0], pure[1]) and torch.equal(pure[0], pure[2])  # the labels play no part
    blend = [_finetuned(0.5, labels)(x) for labels in (None, 1)]
    assert not torch.equal(blend[0], blend[1])
    assert not torch.equal(_finetuned(0.0)(x), blend[0])


def test_distill_is_a_searched_recipe_choice_and_regression_refuses_it() -> None:
    base = {"name": "d", "model": {"name": "mlp"}, "data": {"name": "digits"}, "targets": {"grid": [0.9]}}
    space = SearchSpace.model_validate({**base, "finetune": {"distill": [0.0, 0.7], "temperature": 3.0}})
    ctx = SampleContext("m", "f", {"a": 10, "b": 20}, {"a": (0.0, 0.99), "b": (0.0, 0.99)})
    params = {"target": 0.9, "ft_distill": 0.7, "pref/a": 0.0, "pref/b": 0.0}
    ft = sample(space, optuna.trial.FixedTrial(params), ctx).finetune
    assert (ft.distill, ft.temperature) == (0.7, 3.0)
    assert space.default_recipe().distill == 0.0  # heuristics get the first choice
    with pytest.raises(ValidationError, match="regression task has no logits"):
        SearchSpace.model_validate({**base, "task": {"kind": "regression"}, "data": {"name": "diabetes"},
                                    "finetune": {"distill": [0.5]}})
    with pytest.raises(ValidationError, match=r"\[0, 1\]"):
        SearchSpace.model_validate({**base, "finetune": {"distill": [1.5]}})
