"""extract_features: the frozen audio encoder over every clip, cached by content; GX checks the features."""

from __future__ import annotations

from functools import partial

from pipelines.common import CACHE, FEATURES, MANIFEST, METRICS, config, fail, tracked_stage
from safe.data.checks import validate_features
from safe.data.features import STAT_NAMES, extract_features
from safe.data.manifest import read_manifest
from safe.data.media import load_audio
from safe.io import atomic_dir, write_json_atomic
from safe.models.audio_encoders import build_audio_encoder


def main() -> None:
    cfg = config()
    with tracked_stage("extract_features", cfg, "extract_features") as tracker:
        manifest = read_manifest(MANIFEST)
        encoder = build_audio_encoder(cfg.model.audio_encoder, cache_dir=CACHE / "encoders", seed=cfg.model.seed)
        store, report = extract_features(
            manifest, encoder, partial(load_audio, max_seconds=cfg.data.max_audio_seconds), CACHE / "features",
            batch_size=cfg.extract_features.batch_size, shard_size=cfg.extract_features.shard_size,
        )
        check = validate_features({"pooled": store.pooled.numpy(), "stats": store.stats.numpy()},
                                  {"pooled": store.embed_dim, "stats": len(STAT_NAMES)}, ids=store.ids)
        if not check.success:
            fail(f"feature checks failed; nothing was written.\n{check.to_markdown()}")
        with atomic_dir(FEATURES) as tmp:
            store.save(tmp)
        metrics = {**report.to_json(), "embed_dim": store.embed_dim}
        print(f"extract_features: {report.encoded} clips encoded, {report.cache_hits} from the content cache, "
              f"{report.shards_reused}/{report.shards} shards fully reused")
        tracker.log_metrics(metrics)
        write_json_atomic(METRICS / "extract_features.json", metrics)


if __name__ == "__main__":
    main()
