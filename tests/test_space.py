"""Search-space files: validation errors name the field and line; sampling produces exact budgets."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import FixedTrial

from autoprune.config.budget import weighted_sparsity
from autoprune.config.sampling import SampleContext, sample
from autoprune.config.space import SearchSpace
from autoprune.errors import ConfigError
from conftest import write_space

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "search_spaces").glob("*.yaml")))
def test_shipped_spaces_validate(path: Path) -> None:
    assert SearchSpace.from_yaml(path).name


def test_unknown_key_names_field_and_line(tmp_path: Path) -> None:
    p = write_space(tmp_path / "s.yaml", finetune={"epochs": [1], "lr_scael": [0.3]})
    with pytest.raises(ConfigError) as err:
        SearchSpace.from_yaml(p)
    msg = str(err.value)
    assert "finetune.lr_scael" in msg and "unknown key" in msg and "line" in msg and str(p) in msg


def test_target_out_of_range(tmp_path: Path) -> None:
    p = write_space(tmp_path / "s.yaml", targets={"grid": [0.9, 1.2]})
    with pytest.raises(ConfigError, match=r"field 'targets'.*1.2 outside \[0, 1\)"):
        SearchSpace.from_yaml(p)


def test_nm_with_n_ge_m(tmp_path: Path) -> None:
    p = write_space(tmp_path / "s.yaml", granularity={"kind": "nm", "n": 4, "m": 4})
    with pytest.raises(ConfigError, match=r"granularity.*N:M needs 0 < N < M"):
        SearchSpace.from_yaml(p)


def test_bounds_out_of_range(tmp_path: Path) -> None:
    p = write_space(tmp_path / "s.yaml", layers={"bounds": {"features.*": [0.2, 1.0]}})
    with pytest.raises(ConfigError, match=r"layers.bounds"):
        SearchSpace.from_yaml(p)


def test_pattern_matching_nothing(tmp_path: Path) -> None:
    sp = SearchSpace.from_yaml(write_space(tmp_path / "s.yaml", layers={"include": ["encoder.*"]}))
    with pytest.raises(ConfigError, match=r"layers.include.*'encoder\.\*' matches no prunable layer"):
        sp.select_layers(["features.0", "classifier.1"])


def test_exclude_and_bounds_select(tmp_path: Path) -> None:
    sp = SearchSpace.from_yaml(write_space(tmp_path / "s.yaml", layers={
        "include": ["*"], "exclude": ["classifier.3"], "bounds": {"features.0": [0.0, 0.5]}}))
    layers = sp.select_layers(["features.0", "features.3", "classifier.1", "classifier.3"])
    assert layers == ["features.0", "features.3", "classifier.1"]
    assert sp.bounds_for(layers)["features.0"] == (0.0, 0.5)
    assert sp.bounds_for(layers)["features.3"] == (0.0, 0.99)


def test_sample_with_fixed_trial_hits_target(tmp_path: Path) -> None:
    sp = SearchSpace.from_yaml(write_space(tmp_path / "s.yaml"))
    sizes = {"a": 300, "b": 20000, "c": 1000}
    ctx = SampleContext("m", "fp", sizes, dict.fromkeys(sizes, (0.0, 0.99)))
    params = {"criterion": "magnitude", "schedule": "oneshot", "ft_epochs": 1, "ft_lr_scale": 0.3, "target": 0.9,
              "pref/a": 1.5, "pref/b": -0.5, "pref/c": 0.0}
    pol = sample(sp, FixedTrial(params), ctx)
    assert abs(weighted_sparsity(pol.sparsity, sizes) - 0.9) < 1e-9
    assert pol.sparsity["a"] < pol.sparsity["c"] < pol.sparsity["b"]
    assert pol.finetune.lr == pytest.approx(0.003 * 0.3)


def test_independent_parametrization(tmp_path: Path) -> None:
    sp = SearchSpace.from_yaml(write_space(tmp_path / "s.yaml", parametrization="independent"))
    sizes = {"a": 10, "b": 10}
    ctx = SampleContext("m", "fp", sizes, dict.fromkeys(sizes, (0.0, 0.99)))
    pol = sample(sp, FixedTrial({"criterion": "magnitude", "schedule": "oneshot", "ft_epochs": 1,
                                 "ft_lr_scale": 0.3, "ratio/a": 0.1, "ratio/b": 0.7}), ctx)
    assert pol.sparsity == {"a": 0.1, "b": 0.7}


def test_relative_paths_resolve_against_the_space_file(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    path = write_space(folder / "s.yaml", data={"name": "data/rows.npz"},
                       model={"name": "mlp", "checkpoint": "dense.pt"})
    space = SearchSpace.from_yaml(path)
    assert space.data.name == str(folder / "data" / "rows.npz")
    assert space.model.checkpoint == str(folder / "dense.pt")


def test_a_bad_layer_pattern_is_reported_before_training(tmp_path: Path) -> None:
    from autoprune.workspace import load_workspace

    space = SearchSpace.from_yaml(write_space(tmp_path / "s.yaml", layers={"include": ["nope.*"]},
                                              train={"epochs": 500}))
    with pytest.raises(ConfigError, match=r"layers.include.*'nope.\*' matches no prunable layer"):
        load_workspace(space, "cpu", tmp_path / "runs")
    assert not (tmp_path / "runs" / "models").exists()  # nothing was trained (500 epochs would show)
