"""`safe evaluate` on any manifest: pick the split, check its rows before the model loads, and write strict JSON.

Strict JSON: a metric that cannot be computed (no rows of the kind it needs) is `null` with a reason under
`not_computed`, never NaN; every metric has the number of examples behind it under `n`; every criterion has a
status of pass, fail or not_computed.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from safe.data.manifest import SPLITS, Manifest
from safe.errors import UserError

# metric -> the row set it is computed on (a key of `metric_counts`)
_ROWS_OF = {
    "vl_acc_base": "vl", "vl_acc_safe": "vl", "retention_drop": "vl",
    "audio_acc_base": "audio", "audio_acc_safe": "audio", "audio_gain": "audio",
    "skip_rate": "all", "mean_audio_tokens": "all", "n_test": "all",
    "irrelevant_flip_rate": "vl_with_audio", "irrelevant_flip_rate_upper": "vl_with_audio",
    "forced_flip_rate": "vl", "forced_flip_rate_upper": "vl",
    **{f"forced_flip_rate_{probe}{bound}": "vl" for probe in ("distractor", "silent", "swapped") for bound in ("", "_upper")},
    "latency_ms_policy": "latency", "latency_ms_always_audio": "latency", "latency_ms_base": "latency",
}
_WHY_EMPTY = {
    "vl": "the split has no VL-only example (needs_audio false)",
    "audio": "the split has no audio-dependent example (needs_audio true)",
    "vl_with_audio": "no VL-only example of the split carries an audio clip (e.g. family vl_distractor)",
    "latency": "no example was timed",
    "all": "the split is empty",
}


def select_split(manifest: Manifest, requested: str | None) -> tuple[str, str | None]:
    """(split, note): the asked split, else `test`, else the manifest's only split. Raises UserError listing the
    splits that do hold examples when the choice is empty or ambiguous."""
    counts = {s: len(manifest.by_split(s)) for s in SPLITS}
    present = ", ".join(f"{s} ({n})" for s, n in counts.items() if n) or "none"
    if requested is not None:
        if counts.get(requested):
            return requested, None
        raise UserError(f"split {requested!r} has no examples; the manifest has: {present}",
                        path=manifest.path, fix="pass --split with one of those")
    if counts["test"]:
        return "test", None
    nonempty = [s for s, n in counts.items() if n]
    if len(nonempty) == 1:
        return nonempty[0], f"the manifest has no 'test' examples; evaluating split {nonempty[0]!r}"
    raise UserError(f"the manifest has no 'test' examples; it has: {present}", path=manifest.path,
                    fix="pass --split to choose one")


def check_rows(manifest: Manifest, split: str, max_audio_seconds: float) -> None:
    """Every example of the split has its media present and decodable (audio cropped while decoding), before the
    model loads. Raises UserError naming the manifest, the row id and the file."""
    from safe.data.media import MediaError, load_audio, load_image

    for record in manifest.by_split(split):
        for kind, rel in (("image", record.image), ("audio", record.audio)):
            if rel is None:
                continue
            path = manifest.resolve(rel)
            where = f"row {record.id!r} {kind} {rel!r} ({path})"
            if not path.is_file():
                raise UserError("file not found", path=manifest.path, where=where,
                                fix="fix the path (relative to the manifest's folder) or run safe validate")
            try:
                if kind == "image":
                    load_image(path, notes=[])
                else:
                    load_audio(path, max_seconds=max_audio_seconds)
            except MediaError as err:
                raise UserError(str(err).removeprefix(f"{path}: "), path=manifest.path, where=where,
                                fix="replace or drop the file (safe validate lists every bad row)") from None


def metric_counts(table: Any, n_latency: int) -> dict[str, int]:
    """The number of examples behind each row set of `compute_metrics`."""
    needs = table["needs_audio"].astype(bool).to_numpy()
    has = table["has_audio"].astype(bool).to_numpy()
    return {"all": int(len(table)), "vl": int((~needs).sum()), "audio": int(needs.sum()),
            "vl_with_audio": int((~needs & has).sum()), "latency": int(n_latency)}


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def strict_report(metrics: Mapping[str, Any], criteria: Mapping[str, Mapping[str, Any]], counts: Mapping[str, int],
                  context: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics file: the metrics (null where not computed), `n` per metric, `not_computed` reasons, criteria
    with their status, and `context` (model, manifest, split, thresholds' source). Serialises with allow_nan=False."""
    from safe.eval.criteria import criterion_status

    out: dict[str, Any] = {k: _finite(v) for k, v in metrics.items()}
    out["n"] = {k: counts[_ROWS_OF[k]] for k in metrics if k in _ROWS_OF}
    out["not_computed"] = {k: _WHY_EMPTY[_ROWS_OF.get(k, "all")] for k, v in metrics.items() if out[k] is None}
    out["criteria"] = {
        name: {"value": _finite(c["value"]), "threshold": c["threshold"], "status": criterion_status(c),
               "n": counts[_ROWS_OF[name]]}
        for name, c in criteria.items()
    }
    out.update(context)
    json.dumps(out, allow_nan=False)  # raises here, not half-way through writing, if a NaN slipped through
    return out


def criterion_counts(criteria: Mapping[str, Any], counts: Mapping[str, int]) -> dict[str, int]:
    return {name: counts[_ROWS_OF[name]] for name in criteria}
