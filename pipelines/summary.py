"""Print the success criteria after `make demo`, and where to look next."""

from __future__ import annotations

import json

from pipelines.common import EVAL


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def main() -> None:
    promotion = json.loads((EVAL / "promotion.json").read_text())
    metrics = json.loads((EVAL / "metrics.json").read_text())
    print("\nSAFE success criteria (test split; bound = one-sided 95% confidence limit, n = examples behind it;\n"
          "the gate reads the bound where there is one, else the value)")
    print(f"{'criterion':<24}{'value':>10}{'bound':>10}{'n':>6}  {'threshold':<16}{'result':>6}")
    for name, c in promotion["criteria"].items():
        threshold = c["threshold"]
        shown = f"[{threshold[0]}, {threshold[1]}]" if isinstance(threshold, list) else str(threshold)
        print(f"{name:<24}{_num(c['value']):>10}{_num(c.get('bound')):>10}{str(c.get('n') or '-'):>6}  "
              f"{shown:<16}{'PASS' if c['passed'] else 'FAIL':>6}")
    print(f"\nbase VL acc {_num(metrics['vl_acc_base'])} -> SAFE {_num(metrics['vl_acc_safe'])} (VL-only); "
          f"audio questions {_num(metrics['audio_acc_base'])} -> {_num(metrics['audio_acc_safe'])}")
    print(f"registry: {promotion['model_name']} v{promotion['version']} -> {promotion['decision']}")
    print("\nwhere to look next:")
    print("  data/eval/report.md        criteria, per-family breakdown, robustness, accuracy vs budget")
    print("  data/eval/MODEL_CARD.md    model card generated from this run")
    print("  data/eval/plots/, data/plots/   accuracy vs budget, skip rate per family, Stage A/B curves")
    print("  make ui-mlflow             MLflow UI on http://127.0.0.1:5000 (runs, registry, champion alias)")
    print("  dvc metrics show; dvc plots show")


if __name__ == "__main__":
    main()
