"""The llava profile's code path on tiny configs of the same classes: a LLaVA checkpoint folder loaded in bf16,
CLAP's audio branch loaded from a checkpoint folder, fusion after several decoder layers."""

from __future__ import annotations

import numpy as np
import torch
from transformers import ClapAudioConfig, ClapAudioModelWithProjection, ClapFeatureExtractor

from checkpoints import CLAP_AUDIO  # tests/checkpoints.py
from safe.config import build_config
from safe.inference import load_safe_model
from safe.models.audio_encoders import build_audio_encoder
from safe.models.base_vl import BaseVLModel
from safe.models.safe_model import SAFEArchitecture, SAFEModel


def _clap_folder(path):
    """Only CLAP's audio branch (+ projection) saved; tests/checkpoints.py saves a whole ClapModel."""
    config = ClapAudioConfig(**CLAP_AUDIO, projection_dim=24)
    torch.manual_seed(0)
    ClapAudioModelWithProjection(config).save_pretrained(path)
    ClapFeatureExtractor(feature_size=16, sampling_rate=48000, hop_length=480, max_length_s=1, fft_window_size=1024,
                         frequency_max=14000, truncation="rand_trunc").save_pretrained(path)
    return path


def test_llava_profile_path_on_tiny_checkpoints(tiny_base, tmp_path):
    tiny_base.save_pretrained(tmp_path / "llava")
    clap = _clap_folder(tmp_path / "clap")
    cfg = build_config({"profile": "llava", "model": {
        "base_vl": str(tmp_path / "llava"), "audio_encoder": f"clap:{clap}", "fusion_heads": 4,
        "fusion_layers": [0, -1], "projector_hidden": 64}})
    base = BaseVLModel.from_pretrained(cfg.model.base_vl, dtype=torch.bfloat16)
    encoder = build_audio_encoder(cfg.model.audio_encoder)
    model = SAFEModel(base, SAFEArchitecture.from_config(cfg.model, encoder.embed_dim), audio_encoder=encoder)
    assert model.fusion_layer_ids == [0, 1]
    assert base.dtype == torch.bfloat16 and model.projector.token_scale.dtype == torch.float32

    from PIL import Image

    batch = base.encode(["how many beeps do you hear?"] * 2, [Image.new("RGB", (32, 32))] * 2)
    waves = [np.sin(np.linspace(0, 400, 16000)).astype(np.float32)] * 2  # 16 kHz in; CLAP resamples to 48 kHz
    with torch.no_grad():
        for block in model.fusion.values():
            block.o_proj.lora_B["default"].weight.normal_()
        logits = model(batch, [0, 12], waveforms=waves)
        reference = base(batch)
    assert logits.dtype == torch.bfloat16
    assert torch.equal(logits[0], reference[0]) and not torch.equal(logits[1], reference[1])

    model.save_trainable(tmp_path / "safe", extra_config={"audio_encoder": cfg.model.audio_encoder,
                                                          "base_vl": cfg.model.base_vl})
    reloaded = load_safe_model(tmp_path / "safe")
    assert isinstance(reloaded.audio_encoder, type(encoder))
    for key, value in model.trainable_state_dict().items():
        assert torch.equal(reloaded.trainable_state_dict()[key], value), key
