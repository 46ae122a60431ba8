"""Run the deployed SAFE model over a manifest split: the per-example prediction table and measured latencies.

The table (one row per example) is what `safe.eval.metrics` turns into metrics.json: the base answer, the answer at
every fixed budget, the budget the deployed gate chose and its answer, and robustness probes on VL-only questions
(the adapter forced on at the largest budget with a distractor clip, a silent clip, and another example's clip).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from safe.data.datasets import LlavaCollator, ManifestDataset
from safe.data.features import FeatureStore
from safe.data.manifest import Manifest
from safe.inference import SAFEPredictor, gate_choices
from safe.training.rollout import rollout


@dataclass
class Latency:
    """Per-example wall times in ms of the three paths; `compute_metrics` reduces them (median, mean, p90)."""

    policy_ms: list[float]
    always_audio_ms: list[float]
    base_ms: list[float]

    @property
    def n(self) -> int:
        return len(self.policy_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"latency_ms_policy": list(self.policy_ms), "latency_ms_always_audio": list(self.always_audio_ms),
                "latency_ms_base": list(self.base_ms), "n_latency": self.n}


def prediction_table(predictor: SAFEPredictor, manifest: Manifest, store: FeatureStore, split: str = "test",
                     batch_size: int = 64, max_new_tokens: int = 4, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    model = predictor.model
    dataset = ManifestDataset(manifest, split, features=store)
    if len(dataset) == 0:
        raise ValueError(f"{manifest.path}: no examples in split {split!r}")
    collate = LlavaCollator(model.base, store.embed_dim, with_answers=False)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    ro = rollout(model, loader, max_new_tokens, progress=progress, desc=f"evaluate[{split}]")
    choices = gate_choices(predictor.gate, ro.states, ro.has_audio)
    budgets = choices["budget"]
    column = {b: i for i, b in enumerate(model.token_budgets)}
    probes = _probe_answers(predictor, loader, store, max_new_tokens, seed, progress)
    rows = []
    for i, record in enumerate(ro.records):
        row = {
            "id": record.id, "family": record.family, "needs_audio": bool(record.needs_audio),
            "has_audio": bool(ro.has_audio[i]), "answer": record.answer, "answers": record.answers,
            "pred_base": ro.preds[i][0], "budget": int(budgets[i]), "pred_safe": ro.preds[i][column[int(budgets[i])]],
            "p_audio": float(choices["p_audio"][i]), "audio_budget": int(choices["audio_budget"][i]),
        }
        row.update({f"pred_b{b}": ro.preds[i][column[b]] for b in model.token_budgets})
        row.update(probes.get(record.id, {"pred_distractor": None, "pred_silent": None, "pred_swapped": None}))
        rows.append(row)
    return pd.DataFrame(rows)


@torch.no_grad()
def _probe_answers(predictor, loader, store: FeatureStore, max_new_tokens: int, seed: int, progress: bool) -> dict:
    """VL-only questions answered with the adapter forced on (largest budget) under three kinds of wrong audio."""
    model = predictor.model
    K = max(model.token_budgets)
    rng = np.random.default_rng(seed)
    pool = store.segments  # (N, S, D): any clip of the split's manifest is a distractor for a VL-only question
    silent = _silent_features(predictor, store)
    out: dict[str, dict] = {}
    for batch in tqdm(loader, desc="robustness probes", unit="batch", disable=not progress):
        vl_rows = (~batch.needs_audio).nonzero().flatten()
        if len(vl_rows) == 0 or len(pool) == 0:
            continue
        B = len(batch.records)
        distractor = pool[torch.from_numpy(rng.integers(0, len(pool), B))]
        swapped = batch.audio_features.roll(1, 0)
        swapped_has = batch.has_audio.roll(1, 0)
        swapped = torch.where(swapped_has.view(-1, 1, 1), swapped, distractor)  # (B, S, D)
        answers = {}
        silent_b = None if silent is None else silent.expand(B, -1, -1)  # (B, S, D)
        vl = model.base.batch_rows(batch.vl, vl_rows)  # only VL-only questions are probed
        for name, feats in (("pred_distractor", distractor), ("pred_silent", silent_b), ("pred_swapped", swapped)):
            if feats is None:
                continue
            answers[name] = model.generate_answers(vl, K, audio_features=feats[vl_rows], max_new_tokens=max_new_tokens)
        for j, i in enumerate(vl_rows.tolist()):
            out[batch.records[i].id] = {name: preds[j] for name, preds in answers.items()}
    return out


def _silent_features(predictor, store: FeatureStore) -> torch.Tensor | None:
    encoder = predictor.model.audio_encoder
    if encoder is None:
        return None
    return encoder.encode([np.zeros(16000, dtype=np.float32)]).segments.float().cpu()  # (1, S, D)


def measure_latency(predictor: SAFEPredictor, manifest: Manifest, split: str = "test", n: int = 32,
                    progress: bool = True) -> Latency:
    """Per-example wall time, one example at a time from raw media: deployed gate, always-audio, base VL."""
    records = manifest.by_split(split)[:n]
    if not records:
        return Latency([], [], [])
    K = max(predictor.model.token_budgets)
    policy, always, base = [], [], []
    for r in tqdm(records, desc="latency", unit="example", disable=not progress):
        image, audio = manifest.resolve(r.image), manifest.resolve(r.audio)
        policy.append(predictor.predict(image, audio, r.question).latency_ms)
        always.append(predictor.predict(image, audio, r.question, force_budget=K).latency_ms)
        base.append(predictor.base_latency_ms(image, r.question))
    return Latency(policy, always, base)
