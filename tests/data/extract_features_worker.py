"""One process of the 2-process extraction test (tests/data/test_features_distributed.py), run under
`accelerate launch`: extracts features for a manifest into a shared cache, twice, and writes what this rank
decoded each time (OUT_DIR/<first|again>.rank<r>.json; rank 0 also saves OUT_DIR/<first|again>.store).

usage: extract_features_worker.py MANIFEST CACHE_DIR OUT_DIR SHARD_SIZE
"""

from __future__ import annotations

import sys
from pathlib import Path

from safe.data.features import extract_features
from safe.data.manifest import read_manifest
from safe.data.media import load_audio
from safe.distributed import process_state
from safe.io import write_json_atomic
from safe.models.audio_encoders import build_audio_encoder


def main(manifest_path: str, cache_dir: str, out_dir: str, shard_size: str) -> None:
    """Extract twice into the same cache: the second pass must reuse every shard (a resumed run)."""
    state = process_state()
    manifest = read_manifest(manifest_path)
    encoder = build_audio_encoder("whisper-random:64x2", seed=0)
    out = Path(out_dir)
    for name in ("first", "again"):
        decoded: list[str] = []

        def loader(path):
            decoded.append(str(path))
            return load_audio(path)

        store, report = extract_features(manifest, encoder, loader, cache_dir, batch_size=4,
                                         shard_size=int(shard_size), progress=False, state=state)
        write_json_atomic(out / f"{name}.rank{state.process_index}.json", {
            "decoded": decoded, "report": report.to_json(),
            "shards": [{"index": r.index, "rank": r.rank, "reused": r.reused, "encoded": r.encoded}
                       for r in report.shard_log],
        })
        if state.is_main_process:
            store.save(out / f"{name}.store")
        elif store is not None:
            raise SystemExit(f"rank {state.process_index} got a store; only rank 0 should assemble it")


if __name__ == "__main__":
    main(*sys.argv[1:])
