"""params.yaml refuses nonsense when it is loaded, before anything trains: each error names the file, the key path and
the allowed range. Through the command that reads it (`safe evaluate --params`, checked first: exit 2, nothing
written) and through `load_config`, which every pipeline stage calls."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cli_contract import ROOT, expect_error, files_under
from safe.config import ConfigError, load_config

BAD = [
    ("stage_a:\n  learning_rate_projector: fast\n", ["stage_a.learning_rate_projector", "a number > 0", "'fast'"]),
    ("stage_a:\n  learning_rate_adapter: -0.001\n", ["stage_a.learning_rate_adapter", "a number > 0"]),
    ("base_vl:\n  lr: 0\n", ["base_vl.lr", "a number > 0"]),
    ("stage_b:\n  lr: -1e-3\n", ["stage_b.lr", "a number > 0"]),
    ("model:\n  token_budgets: [0, 4, 99]\n", ["model.token_budgets", "[0, 64]"]),
    ("model:\n  token_budgets: [4, 8]\n", ["model.token_budgets", "start with 0"]),
    ("model:\n  token_budgets: [0, 4.5]\n", ["model.token_budgets[1]", "whole number"]),
    ("stage_a:\n  kl_weight: -1\n", ["stage_a.kl_weight", ">= 0"]),
    ("stage_b:\n  gamma: -3\n", ["stage_b.gamma", ">= 0"]),
    ("stage_a:\n  retention_tolerance: -0.1\n", ["stage_a.retention_tolerance", "[0, 1]"]),
    ("stage_a:\n  steps: 10.5\n", ["stage_a.steps", "whole number", "10.5"]),
    ("stage_b:\n  steps: true\n", ["stage_b.steps", "an integer >= 1", "boolean"]),
    ("model:\n  text_hidden: -64\n", ["model.text_hidden", "an integer >= 1"]),
    ("data:\n  max_audio_seconds: -5\n", ["data.max_audio_seconds", "a number > 0"]),
    ("data:\n  clip_seconds: 0\n", ["data.clip_seconds", "a number > 0"]),
    ("data:\n  size: many\n", ["data.size", "an integer >= 20"]),
    ("stage_a:\n  audio_ratio: 1\n", ["stage_a.audio_ratio", "(0, 1)"]),
    ("stage_a:\n  distractor_prob: 2\n", ["stage_a.distractor_prob", "[0, 1]"]),
    ("stage_a:\n  learning_rate: 0.001\n", ["stage_a.learning_rate", "unknown key"]),
    ("promote:\n  skip_rate_min: 0.8\n  skip_rate_max: 0.7\n", ["promote.skip_rate_min", "promote.skip_rate_max"]),
    ("promote:\n  max_irrelevant_flip_rate: nan\n", ["promote.max_irrelevant_flip_rate", "[0, 1]"]),
    ("evaluate:\n  latency_examples: 0\n", ["evaluate.latency_examples", "an integer >= 1"]),
    ("profile: huge\n", ["profile", "tiny, demo, smol, llava"]),
    ("stage_a: [1, 2]\n", ["stage_a", "mapping"]),
    ("stage_a:\n  steps: [10\n", ["invalid YAML"]),
]


@pytest.mark.parametrize("text, names", BAD, ids=[n[0] for _, n in BAD])
def test_evaluate_refuses_bad_params_before_anything_else(tmp_path, capsys, text, names):
    params = tmp_path / "params.yaml"
    params.write_text("profile: tiny\n" + text if not text.startswith("profile") else text)
    before = files_under(tmp_path)
    # The model and manifest do not exist: the params are checked first, so the error is about them.
    expect_error(["evaluate", "--model", "nomodel", "--manifest", "none.jsonl", "--out", tmp_path / "o.json",
                  "--params", params], capsys, 2, str(params), *names)
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("written, value", [("1e-3", 0.001), ("'5e-4'", 0.0005), ("2E-3", 0.002), (".001", 0.001)])
def test_numbers_in_scientific_notation_are_numbers(tmp_path, written, value):
    """YAML 1.1 reads an unquoted 1e-3 as the string '1e-3'; it is a learning rate all the same."""
    (tmp_path / "params.yaml").write_text(f"profile: tiny\nstage_a:\n  learning_rate_projector: {written}\n")
    as_read = yaml.safe_load((tmp_path / "params.yaml").read_text())["stage_a"]["learning_rate_projector"]
    assert as_read in (value, written.strip("'"))
    lr = load_config(tmp_path / "params.yaml").stage_a.learning_rate_projector
    assert lr == pytest.approx(value) and isinstance(lr, float)


def test_the_projects_params_and_every_profile_stay_valid(tmp_path):
    config = load_config(ROOT / "params.yaml")
    assert config.model.token_budgets == (0, 4, 8, 12) and config.stage_a.learning_rate_projector == 0.001
    for profile in ("tiny", "demo", "smol", "llava"):
        (tmp_path / "p.yaml").write_text(f"profile: {profile}\n")
        load_config(tmp_path / "p.yaml")


def test_integer_valued_floats_are_integers(tmp_path):
    (tmp_path / "p.yaml").write_text("profile: tiny\nstage_a:\n  steps: 100.0\n  batch_size: '16'\n")
    config = load_config(tmp_path / "p.yaml")
    assert config.stage_a.steps == 100 and type(config.stage_a.steps) is int and config.stage_a.batch_size == 16


def test_every_numeric_field_has_a_range():
    """A new numeric field must say its range (RANGES), or the check silently skips it."""
    import dataclasses

    from safe.config import RANGES, SECTIONS

    missing = [f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)
               if f.type in ("int", "float") and f"{name}.{f.name}" not in RANGES]
    assert missing == []


def test_load_config_error_is_a_config_error_with_the_path(tmp_path):
    path = Path(tmp_path / "params.yaml")
    path.write_text("profile: tiny\nstage_b:\n  gamma: -1\n")
    with pytest.raises(ConfigError, match=r"params.yaml: stage_b.gamma must be a number >= 0, got -1"):
        load_config(path)
