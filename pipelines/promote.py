"""promote: register the SAFE bundle in the MLflow registry; alias `champion` only if every criterion passes."""

from __future__ import annotations

import json

from pipelines.common import EVAL, MANIFEST, SAFE_BUNDLE, config, dvc_experiment, run_with_error_boundary
from safe.data.fingerprint import split_fingerprint
from safe.data.manifest import read_manifest
from safe.eval.criteria import Thresholds
from safe.io import write_json_atomic
from safe.tracking import promote


def main() -> None:
    cfg = config()
    metrics = json.loads((EVAL / "metrics.json").read_text())
    # Champions are compared only within one profile and one test set (the registry holds every profile's versions).
    lineage = {"safe.profile": cfg.profile,
               "safe.test_set": split_fingerprint(read_manifest(MANIFEST, on_error=cfg.data.on_error), "test")}
    result = promote(SAFE_BUNDLE, metrics, Thresholds.from_config(cfg.promote), model_name=cfg.promote.model_name,
                     extra_artifacts=[EVAL / "report.md", EVAL / "MODEL_CARD.md"], lineage=lineage,
                     experiment=dvc_experiment(cfg))
    write_json_atomic(EVAL / "promotion.json", result.to_json())
    # `failed` names the failed criteria, or "worse_than_champion" when all pass but the champion stays better.
    print(f"promote: {result.model_name} v{result.version} -> {result.decision}"
          + (f" (failed: {', '.join(result.failed)})" if result.failed else "")
          + f"; champion comparison: {result.compared_with['reason']}")


if __name__ == "__main__":
    run_with_error_boundary(main)
