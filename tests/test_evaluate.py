"""The candidate evaluator: determinism, masks held during fine-tune, schedules, early stop, metrics."""

from __future__ import annotations

import pytest

from autoprune.config.policy import FineTune, Granularity, Policy, Schedule
from autoprune.models.zoo import DigitsCNN
from autoprune.pruning.evaluate import CandidateStopped, evaluate
from autoprune.pruning.metrics import count_macs, size_metrics


def _policy(ws, ratio: float = 0.8, **kw) -> Policy:  # type: ignore[no-untyped-def]
    return Policy(sparsity=dict.fromkeys(ws.layers, ratio), finetune=FineTune(epochs=1, lr=1e-3), **kw)


def test_same_policy_and_seed_give_identical_results(workspace) -> None:  # type: ignore[no-untyped-def]
    a = evaluate(workspace.model, _policy(workspace), workspace.splits, seed=3)
    b = evaluate(workspace.model, _policy(workspace), workspace.splits, seed=3)
    assert a.val == b.val and a.epoch_losses == b.epoch_losses


def test_masks_hold_through_finetune(workspace) -> None:  # type: ignore[no-untyped-def]
    ev = evaluate(workspace.model, _policy(workspace, 0.8), workspace.splits)
    for fqn, s in ev.layer_sparsity.items():
        assert s >= 0.8 - 1.0 / workspace.sizes[fqn] - 1e-9, fqn
    assert abs(ev.size["sparsity"] - 0.8) < 1e-3


def test_dense_model_untouched(workspace) -> None:  # type: ignore[no-untyped-def]
    before = {k: v.clone() for k, v in workspace.model.state_dict().items()}
    evaluate(workspace.model, _policy(workspace), workspace.splits)
    after = workspace.model.state_dict()
    assert all((before[k] == after[k]).all() for k in before)


def test_iterative_schedule_reaches_final_ratio(workspace) -> None:  # type: ignore[no-untyped-def]
    pol = _policy(workspace, 0.9, schedule=Schedule(kind="iterative", steps=3))
    ev = evaluate(workspace.model, pol, workspace.splits)
    assert abs(ev.size["sparsity"] - 0.9) < 1e-3
    assert len(ev.epoch_losses) == 3  # one (partial) epoch per pruning step


def test_channel_and_nm_granularity(workspace) -> None:  # type: ignore[no-untyped-def]
    ch = evaluate(workspace.model, _policy(workspace, 0.5, granularity=Granularity(kind="channel")), workspace.splits)
    assert ch.size["sparsity"] == pytest.approx(0.5, abs=0.05)
    nm = evaluate(workspace.model, _policy(workspace, 0.5, granularity=Granularity(kind="nm", n=2, m=4)),
                  workspace.splits)
    assert nm.size["sparsity"] == pytest.approx(0.5, abs=0.02)


def test_early_stop_callback(workspace) -> None:  # type: ignore[no-untyped-def]
    pol = Policy(sparsity=dict.fromkeys(workspace.layers, 0.5), finetune=FineTune(epochs=3, lr=1e-3))
    with pytest.raises(CandidateStopped) as stop:
        evaluate(workspace.model, pol, workspace.splits, on_epoch=lambda e, acc, s: True)
    assert stop.value.epoch == 1 and stop.value.saved_s > 0
    ev = evaluate(workspace.model, pol, workspace.splits, on_epoch=lambda e, acc, s: False)
    assert len(ev.epoch_losses) == 3


def test_test_split_only_on_request(workspace) -> None:  # type: ignore[no-untyped-def]
    assert evaluate(workspace.model, _policy(workspace), workspace.splits).test is None
    ev = evaluate(workspace.model, _policy(workspace), workspace.splits, with_test=True)
    assert ev.test is not None and 0 <= ev.test["accuracy"] <= 1


def test_size_metrics_on_known_model() -> None:
    m = DigitsCNN(width=32)
    dense, sparse = count_macs(m, (1, 8, 8))
    # conv1: 32·8·8·9, conv2: 64·4·4·(32·9), fc1: 128·256, fc2: 10·128
    assert dense == 32 * 64 * 9 + 64 * 16 * 288 + 128 * 256 + 10 * 128
    assert sparse == dense
    s = size_metrics(m, Granularity(), (1, 8, 8))
    assert s["params"] == sum(p.numel() for p in m.parameters())
    assert s["bytes_dense"] == 4 * s["params"]


def test_taylor_criterion_scores_and_prunes(workspace) -> None:  # type: ignore[no-untyped-def]
    from autoprune.pruning.criteria import Taylor

    scores = Taylor(batches=2).scores(workspace.model, workspace.layers, workspace.splits.train)
    for f in workspace.layers:
        w = workspace.model.get_submodule(f).weight
        assert scores[f].shape == w.shape and float(scores[f].sum()) > 0
    ev = evaluate(workspace.model, _policy(workspace, 0.8, criterion="taylor"), workspace.splits)
    assert abs(ev.size["sparsity"] - 0.8) < 1e-3


def test_thread_count_is_chosen_from_the_model_size(workspace) -> None:  # type: ignore[no-untyped-def]
    import torch

    from autoprune.tasks.training import choose_threads

    before = torch.get_num_threads()
    try:
        assert choose_threads(workspace.model) == 1 == torch.get_num_threads()  # a small model: one thread
        assert choose_threads(workspace.model, requested=2) == 2 == torch.get_num_threads()  # --threads wins
    finally:
        torch.set_num_threads(before)


def test_latency_of_a_slow_model_is_timed_within_its_budget_not_fifty_runs() -> None:
    import time

    import torch

    from autoprune.pruning.metrics import latency_ms

    class Slow(torch.nn.Module):  # a forward pass of 0.2 s, as a language model's batch on a CPU
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            time.sleep(0.2)
            return self.lin(x)

    model = Slow()
    ms = latency_ms(model, (4,), batch=2, runs=50, warmup=5, budget_s=1.0)
    assert ms >= 200.0
    assert 4 <= model.calls <= 8  # one warm-up and three timed passes at least; not 5 + 50
