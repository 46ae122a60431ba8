"""safe.io.content_fingerprint: the key that ties resumable work (Stage A checkpoints) to its inputs."""

from __future__ import annotations

import safe.io as safe_io
from safe.io import content_fingerprint


def test_fingerprint_follows_the_bytes_and_names_of_a_folder(tmp_path):
    folder = tmp_path / "base_vl"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "model.safetensors").write_bytes(b"\x00" * 100)
    first = content_fingerprint(folder)
    assert content_fingerprint(folder) == first  # stable
    (folder / "sub" / "model.safetensors").write_bytes(b"\x00" * 99 + b"\x01")  # retrained weights
    assert content_fingerprint(folder) != first
    (folder / "sub" / "model.safetensors").write_bytes(b"\x00" * 100)
    assert content_fingerprint(folder) == first
    (folder / "config.json").rename(folder / "other.json")  # same bytes, another name
    assert content_fingerprint(folder) != first


def test_fingerprint_of_a_file_and_of_a_hub_id(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_text("a\n")
    assert content_fingerprint(path) != content_fingerprint(tmp_path / "missing")
    assert content_fingerprint("llava-hf/llava-1.5-7b-hf") == content_fingerprint("llava-hf/llava-1.5-7b-hf")
    assert content_fingerprint("llava-hf/llava-1.5-7b-hf") != content_fingerprint("llava-hf/bakllava-v1-hf")


def test_large_files_are_keyed_by_size_and_both_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_io, "FULL_HASH_LIMIT", 10)
    path = tmp_path / "shard.safetensors"
    path.write_bytes(bytes(range(200)) * 200)
    first = content_fingerprint(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # the tail changes
    path.write_bytes(bytes(data))
    assert content_fingerprint(path) != first
    path.write_bytes(bytes(data) + b"x")  # the size changes
    assert content_fingerprint(path) != first


def test_json_files_are_strict_json_with_null_for_nan(tmp_path):
    import json

    import numpy as np

    from safe.io import write_json_atomic

    path = write_json_atomic(tmp_path / "m.json", {"a": float("nan"), "b": [np.float32(1.5), float("inf")],
                                                  "c": np.float64("nan"), "d": 3, "e": None})
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5, None], "c": None, "d": 3, "e": None}
