"""Trainable share of SAFE for every profile: projector + fusion LoRA/norms/gates over the whole model.

Every module is built on PyTorch's meta device (shapes, no memory), the base VL from the profile's sizes: the small
LLaVA the tiny/demo profiles train, SmolLM2-135M-Instruct's published config inside the smol vision tower, and
llava-1.5-7b's published config (CLIP ViT-L/14-336 + a 7B Llama) for the llava profile, so the count needs no
download. Prints one line per profile and writes benchmarks/results_trainable_fraction.json.

    python benchmarks/bench_trainable_fraction.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from safe.config import build_config
from safe.models.fusion_adapter import CrossAttentionBlock, is_frozen_base_weight
from safe.models.projectors import AudioProjector
from safe.provenance import provenance

AUDIO_DIM = {"whisper-random:64x2": 64, "whisper-tiny.en": 384, "clap:laion/clap-htsat-unfused": 512}
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32064, tie_word_embeddings=False)
CLIP_L14_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=336, patch_size=14, projection_dim=768)
OUT = Path(__file__).with_name("results_trainable_fraction.json")


def base_config(profile: str, model) -> LlavaConfig:
    if profile == "llava":
        text, vision = LLAMA_7B, CLIP_L14_336
    else:
        text = SMOLLM2_135M if model.language_model else dict(
            hidden_size=model.text_hidden, intermediate_size=model.text_intermediate,
            num_hidden_layers=model.text_layers, num_attention_heads=model.text_heads,
            num_key_value_heads=model.text_heads, vocab_size=1024, tie_word_embeddings=False)
        vision = dict(hidden_size=model.vision_hidden, intermediate_size=model.vision_hidden * 4,
                      num_hidden_layers=model.vision_layers, num_attention_heads=model.vision_heads,
                      patch_size=model.patch_size, image_size=64)
    return LlavaConfig(vision_config=CLIPVisionConfig(**vision), text_config=LlamaConfig(**text))


def count(profile: str) -> dict:
    model = build_config({"profile": profile}).model
    with torch.device("meta"):
        cfg = base_config(profile, model)
        base = sum(p.numel() for p in LlavaForConditionalGeneration(cfg).parameters())
        D = cfg.text_config.hidden_size
        parts = [AudioProjector(AUDIO_DIM[model.audio_encoder], D, max(model.token_budgets), model.projector_hidden)]
        parts += [CrossAttentionBlock(D, model.fusion_heads, rank=model.lora_rank) for _ in model.fusion_layers]
    named = [(n, p) for part in parts for n, p in part.named_parameters()]
    trainable = sum(p.numel() for n, p in named if not is_frozen_base_weight(n))
    total = base + sum(p.numel() for _, p in named)
    return {"profile": profile, "trainable_params": trainable, "total_params": total,
            "trainable_fraction": trainable / total}


def main() -> None:
    rows = [count(p) for p in ("tiny", "demo", "smol", "llava")]
    for r in rows:
        print(f"{r['profile']:>6}: {r['trainable_params']:>12,} of {r['total_params']:>14,} parameters train "
              f"({100 * r['trainable_fraction']:.2f}%)")
    OUT.write_text(json.dumps({"rows": rows, **provenance()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
