"""SAFE forward at budget 0 vs the base VL forward (target ratio <= 1.02), on the demo profile's model sizes."""

from __future__ import annotations

import torch
from PIL import Image

from _common import demo_base_vl, median_ms, report


def main() -> dict:
    from safe.models.safe_model import SAFEArchitecture, SAFEModel

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    cfg, base = demo_base_vl()
    model = SAFEModel(base, SAFEArchitecture.from_config(cfg.model, audio_embed_dim=384))
    images = [Image.new("RGB", (cfg.data.image_size,) * 2, (255, 0, 0))] * 16
    batch = base.encode(["what color is the circle?"] * 16, images)
    with torch.no_grad():
        t_base = median_ms(lambda: base(batch), repeats=30)
        t_safe0 = median_ms(lambda: model(batch, 0), repeats=30)
        feats = torch.randn(16, 384)
        t_safe12 = median_ms(lambda: model(batch, 12, audio_features=feats), repeats=30)
    ratio = t_safe0 / t_base
    report("SAFE budget 0 vs base VL forward (batch 16, demo sizes)",
           [("base VL forward", t_base), ("SAFE forward, budget 0", t_safe0), ("SAFE forward, budget 12 (cached audio)", t_safe12)],
           ("ratio budget0 / base (target <= 1.02)", ratio))
    return {"safe_budget0_over_base": ratio}


if __name__ == "__main__":
    main()
