"""Tiny checkpoint folders of the llava profile's real classes, written with save_pretrained (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

CLAP_AUDIO = dict(spec_size=64, num_mel_bins=16, window_size=4, patch_size=4, patch_stride=4,
                  patch_embeds_hidden_size=16, hidden_size=32, depths=[1, 1], num_attention_heads=[2, 2])
CLAP_TEXT = dict(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=40)


def tiny_clap_folder(path: Path, seed: int = 0) -> Path:
    """A whole `ClapModel` (text + HTSAT audio towers, like laion/clap-htsat-unfused) and its feature extractor."""
    torch.manual_seed(seed)
    ClapModel(ClapConfig(text_config=CLAP_TEXT, audio_config=CLAP_AUDIO, projection_dim=24)).save_pretrained(path)
    ClapFeatureExtractor(feature_size=16, sampling_rate=48000, hop_length=480, max_length_s=1, fft_window_size=1024,
                         frequency_max=14000, truncation="rand_trunc").save_pretrained(path)
    return Path(path)


def tiny_llava_folder(path: Path, texts: Sequence[str], image_size: int = 32, seed: int = 0) -> Path:
    """A 2-layer `LlavaForConditionalGeneration` (hidden 32), its processor and a byte-level BPE tokenizer trained on `texts`."""
    from safe.config import build_config
    from safe.models.base_vl import BaseVLModel, build_llava, build_processor, build_subword_tokenizer

    cfg = build_config({"profile": "tiny", "model": {
        "vision_hidden": 32, "text_hidden": 32, "text_intermediate": 64, "text_heads": 4, "fusion_heads": 4}}).model
    tokenizer = build_subword_tokenizer(list(texts))
    torch.manual_seed(seed)
    base = BaseVLModel(build_llava(cfg, tokenizer, image_size), build_processor(tokenizer, image_size, 8))
    base.save_pretrained(path)
    return Path(path)
