"""base_vl on the tiny test benchmark, in as many processes as it is launched with (the DDP equivalence test).

usage: base_vl_ddp.py <bench dir with manifest.jsonl> <out folder> <epochs>
Rank 0 saves the trained LLaVA folder and report.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safe.config import BaseVLConfig, build_config
from safe.data.manifest import read_manifest
from safe.distributed import make_accelerator
from safe.training.base_vl import train_base_vl


def main(bench: Path, out: Path, epochs: int) -> None:
    accelerator = make_accelerator()
    model_cfg = build_config({"profile": "tiny", "model": {"vision_hidden": 32, "text_hidden": 32,
                                                           "text_intermediate": 64}}).model
    cfg = BaseVLConfig(epochs=epochs, batch_size=16, lr=3e-3, target_val_acc=1.01)  # never stops early
    report = train_base_vl(read_manifest(bench / "manifest.jsonl"), model_cfg, cfg, 32, out / "model", progress=False,
                           accelerator=accelerator)
    if accelerator.is_main_process:
        (out / "report.json").write_text(json.dumps({**report.to_json(), "world": accelerator.num_processes}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
