"""prepare_data: generate the synthetic benchmark (or take an ingested manifest), then run the GX checks.

Output goes to a temp folder and is moved to data/prepared only after the checks pass, so a failed check stops the
DAG before training and leaves nothing behind for DVC to cache.
"""

from __future__ import annotations

import collections
import dataclasses

from pipelines.common import MANIFEST, METRICS, PREPARED, config, fail, tracked_stage
from safe.data.checks import validate_manifest
from safe.data.manifest import read_manifest, write_manifest
from safe.data.synth import FAMILY_MIX, generate_benchmark, split_sizes
from safe.io import atomic_dir, write_json_atomic


def main() -> None:
    cfg = config()
    with tracked_stage("prepare_data", cfg, "data") as tracker, atomic_dir(PREPARED) as tmp:
        if cfg.data.source == "synth":
            manifest_path = generate_benchmark(
                tmp, sizes=split_sizes(cfg.data.size), seed=cfg.data.seed, image_size=cfg.data.image_size,
                clip_seconds=cfg.data.clip_seconds, speech=cfg.data.speech,
            )
            expected = dict(expected_families=sorted(FAMILY_MIX), family_proportions=FAMILY_MIX)
        else:  # an ingested manifest: copy it with media paths made absolute
            source = read_manifest(cfg.data.manifest, on_error=cfg.data.on_error)
            manifest_path = tmp / MANIFEST.name
            write_manifest([_absolute(source, r) for r in source.records], manifest_path)
            expected = {"expected_families": sorted({r.family for r in source.records})}
        report = validate_manifest(manifest_path, tolerance=cfg.data.family_tolerance,
                                   audio_seconds=(0.05, cfg.data.max_audio_seconds), **expected)
        if not report.success:  # fail() exits: atomic_dir removes tmp, data/prepared is left untouched
            fail(f"data checks failed for {manifest_path.name}; nothing was written.\n{report.to_markdown()}")
        records = read_manifest(manifest_path).records
        summary = {
            "n_examples": len(records),
            **{f"n_{split}": n for split, n in collections.Counter(r.split for r in records).items()},
            **{f"share_{fam}": n / len(records) for fam, n in collections.Counter(r.family for r in records).items()},
        }
        tracker.log_metrics(summary)
        write_json_atomic(METRICS / "prepare_data.json", summary)
        tracker.log_text(report.to_markdown(), "data_checks.md")


def _absolute(manifest, record):
    """The record with its media paths resolved against the source manifest's folder."""
    resolve = lambda p: None if p is None else str(manifest.resolve(p))  # noqa: E731
    return dataclasses.replace(record, image=resolve(record.image), audio=resolve(record.audio))


if __name__ == "__main__":
    main()
