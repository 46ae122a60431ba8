"""CTranslate2 -> transformers conversion of Whisper tiny.en from the offline wheel, checked against ctranslate2."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest
import torch

from safe.models.audio_encoders import WhisperAudioEncoder, build_audio_encoder
from safe.models.offline_wheels import CONVERSION_FILE
from safe.models.whisper_ct2 import (
    TINY_EN_NAME,
    CT2FormatError,
    ct2_encoder_state_dict,
    ensure_whisper_tiny_en,
    read_ct2_model,
    wheel_model_dir,
    whisper_config_from_ct2,
)

SR = 16000


def _speechlike(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 440 * t * (1 + t)) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="session")
def ct2_model():
    return read_ct2_model(wheel_model_dir() / "model.bin")


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("safe-cache")
    ensure_whisper_tiny_en(root)  # the one conversion of this test session
    return root


@pytest.fixture(scope="session")
def tiny_en(cache_root):
    return WhisperAudioEncoder.from_offline_wheel(cache_root)


@pytest.fixture(scope="session")
def ct2_runtime():
    ctranslate2 = pytest.importorskip("ctranslate2", reason="the ctranslate2 runtime (test extra) is not installed")
    return ctranslate2, ctranslate2.models.Whisper(str(wheel_model_dir()), device="cpu", compute_type="float32")


def test_every_encoder_variable_is_mapped(ct2_model):
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    assert ct2_model.spec == "WhisperSpec"
    config = whisper_config_from_ct2(ct2_model)
    assert (config.d_model, config.encoder_layers, config.encoder_attention_heads, config.num_mel_bins) == (384, 4, 6, 80)
    state, unused = ct2_encoder_state_dict(ct2_model)
    assert unused == []
    expected = WhisperEncoder(config).state_dict()
    assert set(state) == set(expected)
    for key, tensor in state.items():
        assert tensor.shape == expected[key].shape, key
        assert tensor.dtype == torch.float32 and torch.isfinite(tensor).all(), key


def test_converted_encoder_matches_ctranslate2(tiny_en, ct2_runtime):
    ctranslate2, runtime = ct2_runtime
    mel = tiny_en.feature_extractor(_speechlike(3.0), sampling_rate=SR, return_tensors="np")["input_features"]
    mel = np.ascontiguousarray(mel, dtype=np.float32)  # (1, 80, 3000): ctranslate2's usual 30 s window
    reference = np.array(runtime.encode(ctranslate2.StorageView.from_array(mel)))  # (1, 1500, 384)
    with torch.no_grad():
        ours = tiny_en.encoder(input_features=torch.from_numpy(mel)).last_hidden_state.numpy()
    assert reference.shape == ours.shape == (1, 1500, 384)
    assert np.abs(ours - reference).max() <= 1e-3


def test_sliced_forward_matches_ctranslate2_on_a_short_clip(tiny_en, ct2_runtime):
    """ctranslate2 also accepts fewer than 3000 mel frames: an independent check of the sliced forward."""
    ctranslate2, runtime = ct2_runtime
    mel = tiny_en.log_mel(_speechlike(2.0))[None]  # (1, 80, 200)
    reference = np.array(runtime.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.numpy()))))
    ours, mask = tiny_en.forward_mel(mel)
    assert reference.shape == ours.shape == (1, 100, 384) and bool(mask.all())
    assert np.abs(ours.numpy() - reference).max() <= 1e-3


def test_offline_encoder_through_the_factory(cache_root):
    enc = build_audio_encoder("whisper-tiny.en", cache_dir=cache_root)
    out = enc.encode([_speechlike(1.0), _speechlike(0.5)])
    assert enc.embed_dim == 384 and out.sequence.shape == (2, 50, 384) and out.mask.sum(1).tolist() == [50, 25]
    assert enc.fingerprint().startswith(f"{TINY_EN_NAME}-")


def test_conversion_is_cached_and_env_overridable(cache_root, monkeypatch):
    folder = cache_root / TINY_EN_NAME
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setenv("SAFE_CACHE_DIR", str(cache_root))
    assert ensure_whisper_tiny_en() == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["config.json", "model.safetensors", "preprocessor_config.json", CONVERSION_FILE])
    assert not [p for p in cache_root.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_foreign_folder_in_the_cache_is_not_trusted(tmp_path):
    (tmp_path / TINY_EN_NAME).mkdir()
    with pytest.raises(FileExistsError, match=f"has no {CONVERSION_FILE}"):
        ensure_whisper_tiny_en(tmp_path)


def test_int8_weights_are_dequantized_with_their_scale(ct2_model):
    name = "encoder/layer_0/ffn/linear_0/weight"
    weight = ct2_model.variables[name].astype(np.float32)  # (1536, 384)
    scale = 127.0 / np.abs(weight).max(axis=1)  # CTranslate2's per-row int8 scale
    variables = dict(ct2_model.variables)
    variables[name] = np.round(weight * scale[:, None]).astype(np.int8)
    variables[name + "_scale"] = scale.astype(np.float32)
    state, unused = ct2_encoder_state_dict(dataclasses.replace(ct2_model, variables=variables))
    assert unused == []
    error = (state["layers.0.fc1.weight"].numpy() - weight) * scale[:, None]  # in quantization steps
    assert np.abs(error).max() <= 0.5 + 1e-3


def test_broken_model_files_raise_naming_the_file(tmp_path):
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes((wheel_model_dir() / "model.bin").read_bytes()[:5000])
    with pytest.raises(CT2FormatError, match="truncated.bin"):
        read_ct2_model(truncated)
    future = tmp_path / "future.bin"
    future.write_bytes(struct.pack("<I", 99))
    with pytest.raises(CT2FormatError, match="future.bin: CTranslate2 model version 99"):
        read_ct2_model(future)
