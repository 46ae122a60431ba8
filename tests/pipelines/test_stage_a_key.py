"""pipelines.stage_a.run_key: a Stage A checkpoint is only resumed by the same run."""

from __future__ import annotations

from pipelines.stage_a import run_key
from safe.config import build_config


def test_the_key_changes_with_the_base_vl_the_data_and_the_settings(tmp_path):
    base, manifest, features = tmp_path / "base_vl", tmp_path / "manifest.jsonl", tmp_path / "features"
    base.mkdir()
    features.mkdir()
    (base / "model.safetensors").write_bytes(b"weights")
    manifest.write_text('{"id": "a"}\n')
    (features / "features.safetensors").write_bytes(b"f")
    cfg = build_config({"profile": "tiny"})
    inputs = (base, manifest, features)
    key = run_key(cfg, inputs)
    assert run_key(cfg, inputs) == key
    (base / "model.safetensors").write_bytes(b"retrained")  # base_vl ran again: a new base, a new run
    retrained = run_key(cfg, inputs)
    assert retrained != key
    manifest.write_text('{"id": "b"}\n')
    assert run_key(cfg, inputs) != retrained
    assert run_key(build_config({"profile": "tiny", "stage_a": {"steps": 81}}), inputs) != run_key(cfg, inputs)
