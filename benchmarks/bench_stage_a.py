"""Stage A training step on cached encoder features vs running the frozen Whisper encoder every step.

Same SAFE model (demo sizes), same batch of 32 one-second clips; "on-the-fly" adds the audio encoder forward
(Whisper tiny.en when its wheel is installed, else the tiny random Whisper) to every step.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from _common import demo_base_vl, median_ms, report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="whisper-tiny.en")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)

    from safe.models.audio_encoders import build_audio_encoder
    from safe.models.safe_model import SAFEArchitecture, SAFEModel
    from safe.training.losses import answer_loss

    cfg, base = demo_base_vl()
    encoder = build_audio_encoder(args.spec)
    model = SAFEModel(base, SAFEArchitecture.from_config(cfg.model, encoder.embed_dim), audio_encoder=encoder)
    rng = np.random.default_rng(0)
    waves = [(0.3 * rng.standard_normal(16000)).astype(np.float32) for _ in range(args.batch)]
    image = Image.new("RGB", (cfg.data.image_size,) * 2, (0, 0, 255))
    batch = base.encode(["how many beeps do you hear?"] * args.batch, [image] * args.batch, ["two"] * args.batch)
    cached = encoder.encode(waves).segments  # (B, S, D): what the feature cache holds
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(features=None, raw=None):
        logits = model(batch.vl if hasattr(batch, "vl") else batch, 12, audio_features=features, waveforms=raw)
        loss = answer_loss(logits, batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    t_cached = median_ms(lambda: step(features=cached), repeats=10, warmup=2)
    t_fly = median_ms(lambda: step(raw=waves), repeats=10, warmup=2)
    speedup = t_fly / t_cached
    report(f"Stage A step, batch {args.batch} ({args.spec})",
           [("cached features", t_cached), ("frozen encoder every step", t_fly)],
           ("examples/s ratio cached / on-the-fly", speedup))
    return {"stage_a_cached_speedup": speedup}


if __name__ == "__main__":
    main()
