"""prepare_data: generate the synthetic benchmark (or take an ingested manifest), then run the GX checks.

Output goes to a temp folder and is moved to data/prepared only after the checks pass, so a failed check stops the
DAG before training and leaves nothing behind for DVC to cache. The checks run as a GX Checkpoint whose HTML Data Docs
go to data/data_docs/manifest (a separate output: their timestamps must not change data/prepared's hash) and to
MLflow. Allowed families come from params.yaml (data.families) or the sources' adapters, never from the data.
"""

from __future__ import annotations

import collections
import dataclasses

from pipelines.common import (
    DATA_DOCS, MANIFEST, METRICS, PREPARED, config, fail, run_with_error_boundary, tracked_stage,
)
from safe.data.checks import families_by_source, validate_manifest
from safe.data.manifest import read_manifest, write_manifest
from safe.data.synth import FAMILY_MIX, generate_benchmark, split_sizes
from safe.io import atomic_dir, write_json_atomic


def main() -> None:
    cfg = config()
    docs = DATA_DOCS / "manifest"
    with (tracked_stage("prepare_data", cfg, "data") as tracker, atomic_dir(PREPARED) as tmp,
          atomic_dir(docs) as docs_tmp):
        if cfg.data.source == "synth":
            manifest_path = generate_benchmark(
                tmp, sizes=split_sizes(cfg.data.size, cfg.data.val_size, cfg.data.test_size), seed=cfg.data.seed,
                image_size=cfg.data.image_size, clip_seconds=cfg.data.clip_seconds, speech=cfg.data.speech,
            )
            proportions = FAMILY_MIX
        else:  # an ingested manifest: copy it with media paths made absolute
            source = read_manifest(cfg.data.manifest, on_error=cfg.data.on_error)
            manifest_path = tmp / MANIFEST.name
            write_manifest([_absolute(source, r) for r in source.records], manifest_path)
            proportions = None
        report = validate_manifest(
            manifest_path, expected_families=families_by_source(cfg.data.families), family_proportions=proportions,
            tolerance=cfg.data.family_tolerance, audio_seconds=(cfg.data.min_audio_seconds, cfg.data.max_clip_seconds),
            sample_rates=cfg.data.sample_rates, min_answer_coverage=cfg.data.min_answer_coverage, docs_dir=docs_tmp,
        )
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
        tracker.log_artifact(docs_tmp, "data_docs")
    print(f"prepare_data: {report.summary().splitlines()[0]}; Data Docs: {docs / 'index.html'}")


def _absolute(manifest, record):
    """The record with its media paths resolved against the source manifest's folder."""
    resolve = lambda p: None if p is None else str(manifest.resolve(p))  # noqa: E731
    return dataclasses.replace(record, image=resolve(record.image), audio=resolve(record.audio))


if __name__ == "__main__":
    run_with_error_boundary(main)
