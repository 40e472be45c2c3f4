"""The config tree: built-in configs load, bad configs name the field and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from activeseg.config import BUILTIN_CONFIGS, Config, load_config, parse_config
from activeseg.errors import ConfigError


@pytest.mark.parametrize("name", BUILTIN_CONFIGS)
def test_builtin_configs_load_and_round_trip(name: str, tmp_path: Path) -> None:
    config = load_config(name)
    saved = tmp_path / "resolved.yaml"
    saved.write_text(config.to_yaml())
    assert load_config(saved) == config


def test_a_bad_value_names_the_field_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  steps: -3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.steps"):
        load_config(path)


def test_an_unknown_key_is_an_error_not_ignored(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("model:\n  knd: ensemble\n")
    with pytest.raises(ConfigError, match=r"model\.knd"):
        load_config(path)


def test_crop_size_must_fit_the_unet_pooling(tmp_path: Path) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text("crops:\n  size: [32, 66, 64]\n")
    with pytest.raises(ConfigError, match=r"crops\.size.*divisible"):
        load_config(path)


def test_missing_and_malformed_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml.*not valid YAML"):
        load_config(broken)


def test_a_stored_bandwidth_without_kernel_keeps_the_flat_window(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text("cluster:\n  bandwidth: 1.0\n")  # written before the Gaussian default
    assert load_config(old).cluster.kernel == "flat"
    assert load_config(old).cluster.bandwidth == 1.0
    new = tmp_path / "new.yaml"
    new.write_text("cluster:\n  min_size: 5\n")
    assert load_config(new).cluster.kernel == "gaussian"
    assert load_config(new).cluster.bandwidth == 0.5
    round_trip = tmp_path / "round.yaml"
    round_trip.write_text(load_config(new).to_yaml())
    assert load_config(round_trip).cluster == load_config(new).cluster


def test_a_stored_config_naming_removed_options_at_their_old_defaults_still_loads(
    tmp_path: Path,
) -> None:
    # What Config.to_yaml() wrote for every project and checkpoint before the options went.
    stored = tmp_path / "stored.yaml"
    stored.write_text(
        "loss:\n  w_mask: 0.3\n  contact_weight: 0.0\n  foreground_pos_weight: null\n"
        "  embed_background: false\n"
    )
    assert load_config(stored) == Config()


@pytest.mark.parametrize(
    "line",
    ["contact_weight: 3.0", "foreground_pos_weight: 1.0", "embed_background: true"],
)
def test_a_removed_option_set_to_anything_else_is_an_error(line: str, tmp_path: Path) -> None:
    path = tmp_path / "research.yaml"
    path.write_text(f"loss:\n  {line}\n")
    field = line.split(":")[0]
    with pytest.raises(ConfigError, match=rf"research\.yaml.*loss\.{field} was removed"):
        load_config(path)


def test_a_removed_option_in_another_section_is_an_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "moved.yaml"
    path.write_text("train:\n  contact_weight: 0.0\n")
    with pytest.raises(ConfigError, match=r"train\.contact_weight: Extra inputs"):
        load_config(path)


@pytest.mark.parametrize(
    ("section", "changes"),
    [
        ("train", {"patch": [0, 48, 48]}),
        ("crops", {"stride": [0, 64, 64]}),
        ("crops", {"size": [-32, 64, 64]}),
        ("model", {"widths": [16, 0]}),
        ("model", {"widths": []}),
        ("model", {"pool": [[0, 2, 2]]}),
        ("train", {"lr": float("inf")}),
        ("loss", {"w_pull": float("nan")}),
    ],
    ids=[
        "patch 0",
        "stride 0",
        "negative size",
        "width 0",
        "no widths",
        "pool 0",
        "lr inf",
        "nan weight",
    ],
)
def test_impossible_sizes_and_non_finite_numbers_are_refused(
    section: str, changes: dict[str, object]
) -> None:
    data = load_config("default").model_dump(mode="json")
    data[section] = {**data[section], **changes}
    with pytest.raises(ConfigError, match=section):
        parse_config(data, origin="test.yaml")
