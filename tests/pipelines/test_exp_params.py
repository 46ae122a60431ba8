"""params.yaml keeps its meaning after DVC rewrites it for `dvc exp run -S`.

DVC applies `-S` overrides with `dvc.utils.hydra.apply_overrides` (the function its experiment queue calls), which
re-dumps the whole file: quotes go (`"no"` becomes `no`), flow lists become block lists, small floats are written
`1e-05`. Each case below applies one override per section through that writer, then loads the file with safe.config.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from safe.config import ConfigError, build_config, load_config

ROOT = Path(__file__).resolve().parents[2]

# One override per params.yaml section: (the -S argument, section, key, the value it must mean).
OVERRIDES = [
    ("profile=tiny", None, "profile", "tiny"),
    ("data.seed=1", "data", "seed", 1),
    ("model.token_budgets=[0,2,6]", "model", "token_budgets", [0, 2, 6]),
    ("accelerate.mixed_precision=bf16", "accelerate", "mixed_precision", "bf16"),
    ("extract_features.batch_size=16", "extract_features", "batch_size", 16),
    ("base_vl.target_val_acc=0.8", "base_vl", "target_val_acc", 0.8),
    ("stage_a.kl_weight=1e-5", "stage_a", "kl_weight", 1e-5),
    ("stage_b.alpha=0.2", "stage_b", "alpha", 0.2),
    ("stage_c.hidden_dim=8", "stage_c", "hidden_dim", 8),
    ("evaluate.seed=3", "evaluate", "seed", 3),
    ("promote.model_name=no", "promote", "model_name", "no"),
]


def _repo_params() -> dict:
    """The repository's params.yaml as its author meant it (it quotes every string YAML could misread)."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_every_params_section_has_a_case():
    assert {section or key for _, section, key, _ in OVERRIDES} == set(_repo_params())


@pytest.mark.parametrize("override,section,key,value", OVERRIDES, ids=[o[0] for o in OVERRIDES])
def test_an_override_through_dvcs_writer_changes_that_value_only(tmp_path, override, section, key, value):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_overrides(params, [override])

    expected = copy.deepcopy(_repo_params())
    (expected[section] if section else expected)[key] = value
    assert load_config(params).to_dict() == build_config(expected).to_dict()


def test_dvc_rewrite_drops_the_quotes_that_yaml_1_1_needed(tmp_path):
    """The case of the issue: after any -S, `mixed_precision: no` is unquoted and still means the string "no"."""
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_overrides(params, ["stage_b.alpha=0.2"])
    assert "mixed_precision: no\n" in params.read_text()
    assert yaml.safe_load(params.read_text())["accelerate"]["mixed_precision"] is False  # how YAML 1.1 reads it
    assert load_config(params).accelerate.mixed_precision == "no"


def test_a_key_params_yaml_does_not_list_needs_a_plus(tmp_path):
    """`-S stage_b.steps=…` fails for a key the file does not list (DVC's overrides are strict); `+stage_b.steps`
    adds it, and the profile default is overridden."""
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    from dvc.exceptions import InvalidArgumentError

    with pytest.raises(InvalidArgumentError):
        apply_overrides(params, ["stage_b.steps=10"])
    apply_overrides(params, ["+stage_b.steps=10"])
    assert load_config(params).stage_b.steps == 10


def test_false_for_mixed_precision_means_no_and_true_is_refused():
    """A YAML 1.1 reader (PyYAML) hands build_config the false it read for an unquoted `no`."""
    assert build_config({"accelerate": {"mixed_precision": False}}).accelerate.mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision"):
        build_config({"accelerate": {"mixed_precision": True}})
