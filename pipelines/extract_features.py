"""extract_features: the frozen audio encoder over every clip, cached by content; GX checks the features.

With `accelerate.num_processes` > 1 the stage re-launches itself under `accelerate launch`; the processes split the
shards (safe/data/features.py) and rank 0 alone assembles the store, runs the checks, writes the outputs and
tracks the MLflow run. A re-run after an interruption skips the shards already done without decoding their audio.
"""

from __future__ import annotations

from functools import partial

from pipelines.common import (
    CACHE, DATA_DOCS, FEATURES, MANIFEST, METRICS, config, fail, launch_processes, run_with_error_boundary,
    tracked_stage,
)
from safe.data.checks import validate_features
from safe.data.features import STAT_NAMES, extract_features
from safe.data.manifest import read_manifest
from safe.data.media import load_audio
from safe.distributed import process_state
from safe.io import atomic_dir, write_json_atomic
from safe.models.audio_encoders import build_audio_encoder


def main() -> None:
    cfg = config()
    launch_processes("pipelines.extract_features", cfg)  # accelerate launch when num_processes > 1
    state = process_state()
    with tracked_stage("extract_features", cfg, "accelerate", "extract_features") as tracker:  # MLflow run on rank 0 only
        manifest = read_manifest(MANIFEST)
        with state.main_process_first():  # rank 0 converts/caches the encoder weights once; the others then load
            encoder = build_audio_encoder(cfg.model.audio_encoder, cache_dir=CACHE / "encoders", seed=cfg.model.seed)
        encoder.to(state.device)
        max_seconds = cfg.data.max_audio_seconds
        store, report = extract_features(
            manifest, encoder, partial(load_audio, max_seconds=max_seconds), CACHE / "features",
            batch_size=cfg.extract_features.batch_size, shard_size=cfg.extract_features.shard_size,
            audio_tag=f"max{max_seconds:g}s", state=state,
        )
        if not state.is_main_process:
            return
        split_of = {r.id: r.split for r in manifest.records}
        with atomic_dir(DATA_DOCS / "features") as docs:
            arrays = {"pooled": store.pooled.numpy(), "segments": store.segments.numpy(), "stats": store.stats.numpy()}
            check = validate_features(arrays, {"pooled": store.embed_dim, "segments": store.embed_dim,
                                               "stats": len(STAT_NAMES)}, ids=store.ids,
                                      splits=[split_of[i] for i in store.ids], dim_checks=("pooled",), docs_dir=docs)
            if not check.success:
                fail(f"feature checks failed; nothing was written.\n{check.to_markdown()}")
            tracker.log_artifact(docs, "data_docs")
        with atomic_dir(FEATURES) as tmp:
            store.save(tmp)
        metrics = {**report.to_json(), "embed_dim": store.embed_dim, "segments": store.num_segments}
        print(f"extract_features: {report.summary()}")
        tracker.log_metrics(metrics)
        write_json_atomic(METRICS / "extract_features.json", metrics)


if __name__ == "__main__":
    run_with_error_boundary(main)
