"""The fidelity ladder: promotion rules, per-target halving replayed on a real study, exact reproduction by
``apply`` of a last-rung score, baselines always promoted, and a resumed study continuing the ladder."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from autoprune.api import export, search
from autoprune.config.policy import Policy
from autoprune.config.space import SearchSpace
from autoprune.config.specs import LadderSpec
from autoprune.deploy.production import apply
from autoprune.errors import ConfigError
from autoprune.study import SearchOptions, run_search
from autoprune.study.attrs import rung_key
from autoprune.study.ladder import (
    RungScore,
    climbed,
    climbs,
    finished_records,
    incumbent_rank,
    late_promotions,
    peers,
    rank_fields,
    rank_value,
    reached,
    scores_of,
)
from autoprune.study.search import ladder_label
from autoprune.tasks.training import classification_metrics
from autoprune.workspace import load_workspace
from conftest import mlflow_runs, write_space

LADDER = {"epochs": [0, 1, 2], "keep": 0.5, "min_peers": 2}
N_RUNGS = len(LADDER["epochs"])


def _space(tmp_path: Path, name: str, **ladder: object) -> SearchSpace:
    return SearchSpace.from_yaml(write_space(
        tmp_path / f"{name}.yaml", name=name, finetune={"lr_scale": [1.0, 0.3], "decay": ["constant", "cosine"]},
        ladder={**LADDER, **ladder}))


def _trials(runs: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    from autoprune.study.storage import load_existing, make_storage

    return load_existing(name, make_storage(None, runs)).trials


def test_climbs_keeps_the_best_fraction_only() -> None:
    assert climbs(0.5, [], keep=0.5, min_peers=3)  # too few peers: everyone climbs
    assert climbs(0.1, [0.9], keep=0.5, min_peers=3)
    others = [0.9, 0.8, 0.7, 0.6, 0.5]  # with itself: 6 scores, the best 3 climb
    assert climbs(0.75, others, keep=0.5, min_peers=3)
    assert not climbs(0.65, others, keep=0.5, min_peers=3)
    assert not climbs(math.nan, [], keep=1.0, min_peers=1)
    # the quota: with 3 of 6 places taken by earlier climbers, even the best score waits
    assert climbs(0.95, others, keep=0.5, min_peers=3, promoted=2)
    assert not climbs(0.95, others, keep=0.5, min_peers=3, promoted=3)


def test_peers_are_equally_sized_candidates_only() -> None:
    scores = [RungScore(0, 0, 0.9, 0.8), RungScore(1, 0, 0.8, 0.99), RungScore(2, 1, 0.9, 0.7),
              RungScore(3, 0, 0.9001, 0.6)]
    assert sorted(peers(scores, 0, 0.9)) == [0.6, 0.8]
    assert peers(scores, 0, 0.9, exclude=0) == [0.6]


def test_late_promotion_lifts_a_stopped_candidate_once() -> None:
    scores = [RungScore(0, 0, 0.9, 0.9), RungScore(1, 0, 0.9, 0.5)]  # trial 1 stopped: 2nd of 2, keep 0.5
    assert late_promotions(scores, {1: 0}, set(), keep=0.5, min_peers=1) == []
    scores += [RungScore(n, 0, 0.9, 0.1) for n in (2, 3)]  # two worse scores arrive: 1 is now in the best half
    assert late_promotions(scores, {1: 0, 2: 0, 3: 0}, set(), keep=0.5, min_peers=1) == [(1, 1)]
    full = [(0, 1, 0.9), (5, 1, 0.9)]  # two of the four places at rung 1 already taken: no room for trial 1
    assert late_promotions(scores, {1: 0, 2: 0, 3: 0}, set(), keep=0.5, min_peers=1, done=full) == []
    assert late_promotions(scores, {1: 0, 2: 0, 3: 0}, {1}, keep=0.5, min_peers=1) == []


def test_ladder_yaml_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"field 'ladder.epochs'.*strictly increasing"):
        SearchSpace.from_yaml(write_space(tmp_path / "a.yaml", ladder={"epochs": [0, 4, 2]}))
    with pytest.raises(ConfigError, match=r"finetune.epochs and ladder.epochs both given"):
        SearchSpace.from_yaml(write_space(tmp_path / "b.yaml", ladder={"epochs": [0, 2]},
                                          finetune={"epochs": [1]}))
    with pytest.raises(ConfigError, match=r"rank_by: give one name, or one per rung below the last \(2\)"):
        SearchSpace.from_yaml(write_space(tmp_path / "d.yaml", ladder={"epochs": [0, 1, 2], "rank_by": ["metric"]}))
    with pytest.raises(ConfigError, match=r"rung 0 has no fine-tune, so no training loss"):
        SearchSpace.from_yaml(write_space(tmp_path / "e.yaml", ladder={"epochs": [0, 1], "rank_by": "train_loss"}))
    with pytest.raises(ConfigError, match=r"field 'finetune.lr_scale'.*> 0"):
        SearchSpace.from_yaml(write_space(tmp_path / "c.yaml", finetune={"lr_scale": [-1]}))


@pytest.fixture(scope="module")
def laddered(tmp_path_factory: pytest.TempPathFactory, runs_dir: Path) -> tuple[SearchSpace, str]:
    space = _space(tmp_path_factory.mktemp("ladder"), "ladder")
    run_search(space, SearchOptions(n_trials=30, runs_dir=runs_dir, device="cpu"))
    return space, "ladder"


def test_halving_per_target_replays_exactly(laddered: tuple[SearchSpace, str], runs_dir: Path) -> None:
    """Replay the study in trial order: each non-baseline candidate climbed iff its score was in the best half
    of the equally sized scores recorded before it and its size's quota of climbers had room; only the last
    rung completes a trial."""
    trials = sorted(_trials(runs_dir, laddered[1]), key=lambda t: t.number)
    fields = rank_fields(laddered[0].ladder)
    assert fields == ["kl_to_dense", "train_loss"]  # the default: what ranked best in the rank-correlation study
    stops, climbs_seen = 0, 0
    for t in trials:
        attrs = t.user_attrs
        before = [(u.number, u.user_attrs) for u in trials if u.number < t.number]
        earlier = scores_of(before, fields)
        last_rung = max(r for r in range(N_RUNGS) if rung_key(r) in attrs)
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert last_rung == N_RUNGS - 1 and t.values[0] == attrs[rung_key(last_rung)]["score"]
        else:
            assert t.state == optuna.trial.TrialState.PRUNED and attrs["ladder_stop"] == last_rung
        if "baseline" in attrs:
            assert t.state == optuna.trial.TrialState.COMPLETE  # baselines always reach the production rung
            continue
        for r in range(int(attrs.get("start_rung", 0)), last_rung + 1):
            rec = attrs[rung_key(r)]
            went_on = rung_key(r + 1) in attrs
            if r < N_RUNGS - 1:
                up = climbed(reached(before, N_RUNGS), r, rec["sparsity"])
                want = climbs(rank_value(rec, fields[r]), peers(earlier, r, rec["sparsity"]), LADDER["keep"],
                              LADDER["min_peers"], up)
                assert went_on == want, (t.number, r)
                stops += not went_on
                climbs_seen += went_on
    assert stops > 0 and climbs_seen > 0  # both decisions were exercised


def test_rungs_record_their_epochs_losses_and_divergence(laddered: tuple[SearchSpace, str],
                                                               runs_dir: Path) -> None:
    for t in _trials(runs_dir, laddered[1]):
        for r, epochs in enumerate(LADDER["epochs"]):
            rec = t.user_attrs.get(rung_key(r))
            if rec is not None:
                assert rec["epochs"] == epochs
                assert rec["kl_to_dense"] >= 0 and math.isfinite(rec["val_loss"])
                assert math.isnan(rec["train_loss"]) if epochs == 0 else math.isfinite(rec["train_loss"])


def test_last_rung_score_is_reproduced_exactly_by_apply(laddered: tuple[SearchSpace, str], runs_dir: Path,
                                                        tmp_path: Path) -> None:
    space, name = laddered
    done = [t for t in _trials(runs_dir, name) if t.state == optuna.trial.TrialState.COMPLETE
            and "baseline" not in t.user_attrs]
    t = max(done, key=lambda t: t.values[0])
    pol = export(name, tmp_path / "p.json", trial=t.number, runs_dir=runs_dir, track=False)
    assert pol.finetune.epochs == LADDER["epochs"][-1]  # the policy carries the production recipe
    ws = load_workspace(space, "cpu", runs_dir)
    res = apply(ws.model, Policy.load(tmp_path / "p.json"), ws.splits, measure_latency=False)
    val = classification_metrics(res.model, ws.splits.val, ws.splits.num_classes)["accuracy"]
    assert val == t.values[0]


def test_resume_continues_the_ladder_without_rerunning_rungs(tmp_path: Path, runs_dir: Path) -> None:
    space = _space(tmp_path, "resume_ladder")
    run_search(space, SearchOptions(n_trials=16, runs_dir=runs_dir, device="cpu"))
    before = _trials(runs_dir, "resume_ladder")
    stopped = {t.number: t for t in before if t.state == optuna.trial.TrialState.PRUNED}
    assert stopped
    # resume with keep = 1: every stopped candidate now belongs to the best fraction of its rung
    resumed = space.model_copy(update={"ladder": space.ladder.model_copy(update={"keep": 1.0})})
    run_search(resumed, SearchOptions(n_trials=len(stopped), runs_dir=runs_dir, device="cpu"))
    every = _trials(runs_dir, "resume_ladder")
    promotions = [t for t in every if "promoted_from" in t.user_attrs]
    promoted = {t.user_attrs["promoted_from"]: t for t in promotions}
    assert set(promoted) == set(stopped) and len(promotions) == len(stopped)  # each exactly once
    for number, t in promoted.items():
        start = stopped[number].user_attrs["ladder_stop"] + 1
        assert t.user_attrs["start_rung"] == start
        assert [r for r in range(N_RUNGS) if rung_key(r) in t.user_attrs] == list(range(start, N_RUNGS))
        assert t.params == stopped[number].params and t.state == optuna.trial.TrialState.COMPLETE


def test_compute_spent_sums_each_phase_over_every_rung_of_a_trial() -> None:
    from autoprune.study.attrs import rung_key
    from autoprune.study.ladder import compute_spent

    def rec(epochs: float, prune: float, finetune: float) -> dict[str, float]:
        return {"epochs": epochs, "time_s": prune + finetune + 0.1, "prune_s": prune, "finetune_s": finetune,
                "measure_s": 0.1}

    climber = {rung_key(0): rec(0, 0.2, 0.0), rung_key(1): rec(2, 0.2, 1.0), rung_key(2): rec(20, 0.2, 10.0)}
    stopped = {rung_key(0): rec(0, 0.2, 0.0)}
    out = compute_spent([climber, stopped, {}], 3)
    assert out["finetune_epochs"] == 22
    assert abs(out["mean_time_finetune"] - 11.0 / 2) < 1e-9  # per trial that ran, all its rungs summed
    assert abs(out["mean_time_prune"] - 0.8 / 2) < 1e-9
    per_trial = out["eval_seconds"] / 2
    assert out["mean_time_finetune"] + out["mean_time_prune"] + out["mean_time_measure"] <= per_trial + 1e-9


def test_stratified_rungs_compare_each_schedule_with_its_own() -> None:
    scores = [RungScore(0, 1, 0.9, 0.9, "oneshot"), RungScore(1, 1, 0.9, 0.8, "oneshot"),
              RungScore(2, 1, 0.9, 0.3, "cubic×3"), RungScore(3, 1, 0.9, 0.2, "cubic×3")]
    assert sorted(peers(scores, 1, 0.9, stratum="cubic×3")) == [0.2, 0.3]
    assert peers(scores, 1, 0.9) == []  # no unstratified scores
    done = [(0, 2, 0.9, "oneshot"), (9, 2, 0.9)]
    assert climbed(done, 1, 0.9, stratum="oneshot") == 1 and climbed(done, 1, 0.9) == 1
    # the best cubic candidate climbs although every one-shot candidate scored higher
    assert late_promotions(scores, {1: 1, 2: 1, 3: 1}, set(), keep=0.5, min_peers=1, done=done) == [(2, 2)]


def test_incumbent_is_the_best_finished_candidate_of_the_size() -> None:
    rec = {"sparsity": 0.9, "rank": -1.5}
    finished = [(0.7, {rung_key(0): rec}), (0.8, {rung_key(0): {**rec, "rank": -1.2}}),
                (0.95, {rung_key(0): {**rec, "sparsity": 0.5, "rank": -9.0}}),  # another size
                (0.99, {rung_key(1): rec})]  # no record of rung 0
    assert incumbent_rank(finished, 0, 0.9) == -1.2
    assert incumbent_rank(finished, 0, 0.7) is None
    assert incumbent_rank(finished, 0, 0.9, stratum="cubic×3") is None


def test_finished_records_read_a_late_promotion_s_lower_rungs_from_its_origin() -> None:
    origin = _numbered(3, optuna.trial.TrialState.PRUNED, None, {rung_key(0): {"sparsity": 0.9, "rank": -1.0}})
    resumed = _numbered(7, optuna.trial.TrialState.COMPLETE, 20.0,
                        {"promoted_from": 3, rung_key(1): {"sparsity": 0.9, "rank": -0.5}})
    out = finished_records([origin, resumed], sign=-1.0)  # perplexity: lower is better
    assert [score for score, _ in out] == [-20.0]
    assert incumbent_rank(out, 0, 0.9) == -1.0 and incumbent_rank(out, 1, 0.9) == -0.5


def _numbered(number: int, state: optuna.trial.TrialState, value: float | None, attrs: dict[str, object]
              ) -> optuna.trial.FrozenTrial:
    t = optuna.trial.create_trial(state=state, value=value, user_attrs=attrs)
    t.number = number
    return t


def test_elitist_ladder_climbs_only_past_the_incumbent(tmp_path: Path, runs_dir: Path) -> None:
    """Replay a study with ``promote: elitist`` in trial order: a searched candidate climbed from a rung iff it
    ranked at least as well there as the best finished candidate of its size so far; nothing was promoted late."""
    path = write_space(  # (1+1) evolution, what the elitist rule is for
        tmp_path / "elitist.yaml", name="elitist", sampler="evolution", sampler_options={"population": 1},
        finetune={"lr_scale": [1.0, 0.3]},
        ladder={**LADDER, "promote": "elitist"})
    space = SearchSpace.from_yaml(path)
    search(path, n_trials=20, runs_dir=runs_dir, device="cpu")  # with MLflow tracking, as the CLI runs it
    trials = sorted(_trials(runs_dir, "elitist"), key=lambda t: t.number)
    fields = rank_fields(space.ladder)
    stops = climbs_seen = 0
    for t in trials:
        attrs = t.user_attrs
        assert "promoted_from" not in attrs
        if "baseline" in attrs:
            continue
        before = finished_records([u for u in trials if u.number < t.number], sign=1.0)  # accuracy
        for r in range(N_RUNGS - 1):
            if rung_key(r) not in attrs:
                break
            rec = attrs[rung_key(r)]
            bar = incumbent_rank(before, r, rec["sparsity"])
            want = bar is None or rank_value(rec, fields[r]) >= bar
            assert (rung_key(r + 1) in attrs) == want, (t.number, r)
            stops += not want
            climbs_seen += want and bar is not None
    assert stops > 0 and climbs_seen > 0  # both decisions were exercised against an incumbent
    _, parent, _ = mlflow_runs(runs_dir, "elitist")  # the parent run names the rule the ladder ran
    assert parent.data.params["ladder"] == "epochs [0.0, 1.0, 2.0], elitist (climb past the incumbent)"

def test_ladder_label_names_rungs_and_rule(tmp_path: Path) -> None:
    assert ladder_label(_space(tmp_path, "plain").ladder) == "epochs [0.0, 1.0, 2.0], keep 0.5"
    tokens = LadderSpec(tokens=[512, 2048], epochs=[0, 0, 0], keep=0.34, promote="elitist")
    assert ladder_label(tokens) == "tokens [512, 2048], epochs [0.0, 0.0, 0.0], elitist (climb past the incumbent)"
    held = tokens.model_copy(update={"tokens_from": "held_out"})
    assert ladder_label(held).startswith("tokens [512, 2048] (held-out windows), epochs")
