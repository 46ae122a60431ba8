"""promote: register the SAFE bundle in the MLflow registry; alias `champion` only if every criterion passes."""

from __future__ import annotations

import json

from pipelines.common import EVAL, SAFE_BUNDLE, config, dvc_experiment
from pipelines.evaluate import thresholds
from safe.io import write_json_atomic
from safe.tracking import promote


def main() -> None:
    cfg = config()
    metrics = json.loads((EVAL / "metrics.json").read_text())
    result = promote(SAFE_BUNDLE, metrics, thresholds(cfg), model_name=cfg.promote.model_name,
                     extra_artifacts=[EVAL / "report.md", EVAL / "MODEL_CARD.md"], experiment=dvc_experiment(cfg))
    write_json_atomic(EVAL / "promotion.json", result.to_json())
    # `failed` names the failed criteria, or "worse_than_champion" when all pass but the champion stays better.
    print(f"promote: {result.model_name} v{result.version} -> {result.decision}"
          + (f" (failed: {', '.join(result.failed)})" if result.failed else ""))


if __name__ == "__main__":
    main()
