"""The headline metrics (data/eval/headline.json): the one metrics file dvc.yaml declares, so `dvc exp show` and
`dvc metrics show` print the success criteria and a few numbers instead of every stage's metrics.

Key order is column order in `dvc exp show`, which collapses columns from the right when the terminal is narrow:
the verdict first, then the criteria's values, then which failed (a wide text column), then the accuracies. The full
set stays in metrics.json.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from safe.eval.criteria import CRITERIA, all_passed, failed_criteria

ACCURACIES = ("audio_acc_safe", "vl_acc_safe")


def headline_metrics(metrics: Mapping[str, Any], criteria: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """{passed, <criterion>: value for each criterion, failed, audio_acc_safe, vl_acc_safe}.

    `failed` names the failed criteria ("none" when all pass): `dvc exp show` cannot colour a verdict per criterion,
    and four more boolean columns would not fit a terminal.
    """
    missing = [name for name in (*CRITERIA, *ACCURACIES) if name not in metrics]
    if missing:
        raise KeyError(f"metrics lack {missing} needed by the headline metrics")
    return {"passed": all_passed(criteria), **{name: float(metrics[name]) for name in CRITERIA},
            "failed": ",".join(failed_criteria(criteria)) or "none",
            **{name: float(metrics[name]) for name in ACCURACIES}}


def headline_json(headline: Mapping[str, Any]) -> str:
    """The file's text, keys in the order given (they are `dvc exp show`'s column order)."""
    return json.dumps(dict(headline), indent=2) + "\n"
