"""Frozen audio encoders on tiny configs: shapes, masks, slicing, freezing, input checks, checkpoint loading."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from safe.models.audio_encoders import (
    AudioInputError,
    ClapAudioEncoder,
    WhisperAudioEncoder,
    build_audio_encoder,
    resample_if_needed,
    tiny_whisper_config,
)

SR = 16000


def _clip(seconds: float, seed: int = 0, sr: int = SR) -> np.ndarray:
    """A deterministic chirp plus noise, float32 mono."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * (300 + 200 * seed) * t * (1 + t)) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def whisper():
    return build_audio_encoder("whisper-random:32x2", seed=0)


@pytest.fixture(scope="module")
def tiny_clap_parts():
    from transformers import ClapAudioConfig, ClapFeatureExtractor

    config = ClapAudioConfig(spec_size=64, num_mel_bins=16, window_size=4, patch_size=4, patch_stride=4,
                             patch_embeds_hidden_size=16, hidden_size=32, depths=[1, 1], num_attention_heads=[2, 2],
                             projection_dim=24)
    fe = ClapFeatureExtractor(feature_size=16, sampling_rate=SR, hop_length=160, max_length_s=1, fft_window_size=400,
                              frequency_max=8000, truncation="rand_trunc")
    return config, fe


def test_encoding_under_a_bf16_autocast_gives_the_cached_float32_features(whisper):
    """evaluate encodes its silent clip under `evaluate.mixed_precision: bf16`; the features must be the ones
    extract_features cached in float32 (a bf16 log-mel used to crash the feature extractor)."""
    from safe.distributed import inference_autocast

    clips = [_clip(1.0), _clip(0.5, 1)]
    expected = whisper.encode(clips)
    with inference_autocast("bf16"):
        got = whisper.encode(clips)
    assert got.segments.dtype == torch.float32 and torch.equal(got.segments, expected.segments)
    assert torch.equal(got.sequence, expected.sequence)


def test_whisper_batch_of_different_lengths_is_padded_and_masked(whisper):
    out = whisper.encode([_clip(1.0), _clip(0.5, 1), _clip(0.2, 2)])
    assert out.sequence.shape == (3, 50, 32)  # 1 s = 100 mel frames = 50 encoder frames
    assert out.mask.dtype == torch.bool
    assert out.mask.sum(1).tolist() == [50, 25, 10]
    assert torch.all(out.sequence[1, 25:] == 0) and torch.all(out.sequence[2, 10:] == 0)
    expected = out.sequence[2, :10].mean(0)
    torch.testing.assert_close(out.pooled[2], expected)
    assert out.pooled.shape == (3, whisper.embed_dim)


def test_whisper_clip_features_do_not_depend_on_its_batch(whisper):
    clips = [_clip(1.0), _clip(0.5, 1), _clip(0.23, 2)]
    batch = whisper.encode(clips)
    for i, clip in enumerate(clips):
        alone = whisper.encode([clip])
        n = int(alone.mask.sum())
        torch.testing.assert_close(batch.sequence[i, :n], alone.sequence[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batch.pooled[i], alone.pooled[0], atol=1e-5, rtol=1e-5)


def test_short_clip_gets_a_short_forward(whisper):
    mel = whisper.log_mel(_clip(2.0))
    assert mel.shape == (80, 200)  # log-mel only for the clip, not 3000 frames
    assert whisper.encode([_clip(2.0)]).sequence.shape[1] == 100
    assert whisper.encode([np.full(100, 0.1, dtype=np.float32)]).sequence.shape[1] == 1  # padded to one window


def test_sliced_forward_equals_transformers_forward_on_30_seconds(whisper):
    mel = whisper.log_mel(_clip(30.0))[None]  # (1, 80, 3000)
    assert mel.shape[-1] == 3000
    with torch.no_grad():
        ours, mask = whisper.forward_mel(mel)
        theirs = whisper.encoder(input_features=mel).last_hidden_state
    assert bool(mask.all()) and ours.shape == (1, 1500, 32)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_encode_is_deterministic_and_seeded():
    a, b = build_audio_encoder("whisper-random:32x2", seed=3), build_audio_encoder("whisper-random:32x2", seed=3)
    clip = _clip(0.7)
    assert torch.equal(a.encode([clip]).sequence, a.encode([clip]).sequence)
    assert torch.equal(a.encode([clip]).pooled, b.encode([clip]).pooled)
    assert a.fingerprint() == b.fingerprint()
    assert build_audio_encoder("whisper-random:32x2", seed=4).fingerprint() != a.fingerprint()


def test_encoder_is_frozen_and_stays_in_eval(whisper):
    assert not any(p.requires_grad for p in whisper.parameters())
    whisper.train()
    assert not whisper.training and not any(m.training for m in whisper.modules())
    out = whisper.encode([torch.from_numpy(_clip(0.3))])
    assert not out.sequence.requires_grad


@pytest.mark.parametrize("bad, message", [
    ([_clip(0.1), np.zeros(0, dtype=np.float32)], "waveform 1 is empty"),
    ([np.array([0.0, np.nan, 0.1], dtype=np.float32)], "waveform 0 has 1 NaN/inf"),
    ([_clip(0.1), np.array([np.inf] * 500, dtype=np.float32)], "waveform 1 has 500 NaN/inf"),
    ([np.zeros((2, 800), dtype=np.float32)], r"waveform 0 has shape \(2, 800\)"),
    ([np.zeros(800, dtype=np.int16)], "waveform 0 has dtype int16"),
    ([], "empty batch"),
])
def test_bad_inputs_raise_naming_the_clip(whisper, bad, message):
    with pytest.raises(AudioInputError, match=message):
        whisper.encode(bad)


def test_a_bare_array_is_rejected(whisper):
    with pytest.raises(TypeError, match="list of 1-D waveforms"):
        whisper.encode(_clip(0.2))


def test_44k_input_is_resampled(whisper):
    clip44 = _clip(1.0, sr=44100)
    resampled = resample_if_needed(clip44, 44100)
    assert resampled.dtype == np.float32 and abs(resampled.size - SR) <= 1
    expected = librosa.resample(clip44, orig_sr=44100, target_sr=SR, res_type="soxr_hq")
    out = whisper.encode([clip44], sampling_rate=44100)
    assert out.sequence.shape[1] == 50
    torch.testing.assert_close(out.pooled, whisper.encode([expected]).pooled)
    with pytest.raises(AudioInputError, match="sampling_rate"):
        resample_if_needed(clip44, 0)


def test_clips_over_30_seconds_are_cropped_with_a_warning(whisper):
    with pytest.warns(UserWarning, match=r"clip\(s\) \[1\] longer than 30 s"):
        out = whisper.encode([_clip(0.5), np.full(31 * SR, 0.01, dtype=np.float32)])
    assert out.sequence.shape[1] == 1500 and out.mask.sum(1).tolist() == [25, 1500]


def test_clap_tiny_config_shapes_mask_and_determinism(tiny_clap_parts):
    config, fe = tiny_clap_parts
    clap = ClapAudioEncoder.from_config(config, fe, seed=0)
    clips = [_clip(1.0), _clip(0.4, 1)]
    out = clap.encode(clips)
    assert clap.embed_dim == 24 and out.pooled.shape == (2, 24)
    assert out.sequence.shape[0] == 2 and out.sequence.shape[2] == 24 and out.sequence.shape[1] > 1
    assert out.mask.shape == out.sequence.shape[:2] and bool(out.mask.all())
    torch.testing.assert_close(out.pooled, clap.model(**_clap_inputs(fe, clips)).audio_embeds)
    assert torch.equal(out.pooled, clap.encode(clips).pooled)
    assert not any(p.requires_grad for p in clap.parameters())
    raw = ClapAudioEncoder.from_config(config, fe, seed=0, use_projection=False)
    raw_out = raw.encode(clips)
    assert raw.embed_dim == 32 and raw_out.sequence.shape[2] == 32
    torch.testing.assert_close(raw_out.pooled, raw_out.sequence.mean(1))


def test_clap_loads_a_full_clap_checkpoint(tmp_path, tiny_clap_parts):
    from transformers import ClapConfig, ClapModel, ClapTextConfig

    audio_config, fe = tiny_clap_parts
    text_config = ClapTextConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=40)
    torch.manual_seed(0)
    full = ClapModel(ClapConfig(text_config=text_config.to_dict(), audio_config=audio_config.to_dict(),
                                projection_dim=24))
    full.save_pretrained(tmp_path / "clap")
    fe.save_pretrained(tmp_path / "clap")
    clap = build_audio_encoder(f"clap:{tmp_path / 'clap'}")
    assert isinstance(clap, ClapAudioEncoder) and clap.native_sampling_rate == SR
    torch.testing.assert_close(clap.model.audio_projection.linear2.weight, full.audio_projection.linear2.weight)
    torch.testing.assert_close(clap.model.audio_model.audio_encoder.norm.weight,
                               full.audio_model.audio_encoder.norm.weight)
    assert clap.encode([_clip(0.5)]).pooled.shape == (1, 24)


@pytest.mark.parametrize("model_class", ["WhisperForConditionalGeneration", "WhisperModel"])
def test_whisper_from_pretrained_takes_the_encoder(tmp_path, model_class):
    import transformers

    config = tiny_whisper_config(32, 2, vocab_size=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                 decoder_start_token_id=1)
    torch.manual_seed(1)
    full = getattr(transformers, model_class)(config)
    full.save_pretrained(tmp_path / "w")
    enc = build_audio_encoder(f"whisper:{tmp_path / 'w'}")
    source = full.get_encoder()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(enc.encoder.state_dict()[key], value, msg=key)
    assert enc.fingerprint().startswith("whisper:")


def test_whisper_from_pretrained_names_what_is_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty is missing config.json"):
        WhisperAudioEncoder.from_pretrained(tmp_path / "empty")
    tiny_whisper_config(32, 1).save_pretrained(tmp_path / "noweights")
    with pytest.raises(FileNotFoundError, match=r"noweights is missing its weights: none of \['model.safetensors'"):
        WhisperAudioEncoder.from_pretrained(tmp_path / "noweights")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        WhisperAudioEncoder.from_pretrained(tmp_path / "nowhere")


def test_unknown_spec_is_rejected():
    with pytest.raises(ValueError, match="unknown audio encoder spec 'wav2vec'"):
        build_audio_encoder("wav2vec")
    with pytest.raises(ValueError, match="d_model"):
        build_audio_encoder("whisper-random")


def test_whisper_random_from_a_config_dict():
    enc = build_audio_encoder("whisper-random", tiny_config={"d_model": 48, "encoder_layers": 1})
    assert enc.embed_dim == 48 and len(enc.encoder.layers) == 1


def _clap_inputs(fe, clips):
    feats = fe(clips, sampling_rate=fe.sampling_rate, return_tensors="pt")
    return {"input_features": feats["input_features"]}
