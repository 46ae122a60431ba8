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

from safe.data.datasets import Batch, LlavaCollator, ManifestDataset
from safe.data.features import FeatureStore
from safe.data.manifest import Manifest
from safe.inference import SAFEPredictor, gate_choices
from safe.models.prompt_prefix import PromptPrefix
from safe.models.safe_model import SAFEModel
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
    probes = RobustnessProbes(model, store, max_new_tokens, seed)
    ro = rollout(model, loader, max_new_tokens, progress=progress, desc=f"evaluate[{split}]", on_batch=probes.add)
    choices = gate_choices(predictor.gate, ro.states, ro.has_audio)
    budgets = choices["budget"]
    column = {b: i for i, b in enumerate(model.token_budgets)}
    rows = []
    for i, record in enumerate(ro.records):
        row = {
            "id": record.id, "family": record.family, "needs_audio": bool(record.needs_audio),
            "has_audio": bool(ro.has_audio[i]), "answer": record.answer, "answers": record.answers,
            "pred_base": ro.preds[i][0], "budget": int(budgets[i]), "pred_safe": ro.preds[i][column[int(budgets[i])]],
            "p_audio": float(choices["p_audio"][i]), "audio_budget": int(choices["audio_budget"][i]),
        }
        row.update({f"pred_b{b}": ro.preds[i][column[b]] for b in model.token_budgets})
        row.update(probes.answers.get(record.id, {"pred_distractor": None, "pred_silent": None, "pred_swapped": None}))
        rows.append(row)
    return pd.DataFrame(rows)


class RobustnessProbes:
    """VL-only questions answered with the adapter forced on (largest budget) under three kinds of wrong audio, batch
    by batch during the rollout (`add` is its `on_batch`), from the base pass's prompt prefix; `answers`: id ->
    {pred_distractor, pred_silent, pred_swapped}."""

    def __init__(self, model: SAFEModel, store: FeatureStore, max_new_tokens: int, seed: int):
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.rng = np.random.default_rng(seed)
        self.pool = store.segments  # (N, S, D): any clip of the split's manifest is a distractor for a VL-only question
        self.silent = _silent_features(model)  # (1, S, D) or None
        self.answers: dict[str, dict] = {}

    @torch.no_grad()
    def add(self, batch: Batch, prefix: PromptPrefix) -> None:
        model, K = self.model, max(self.model.token_budgets)
        vl_rows = (~batch.needs_audio).nonzero().flatten()
        if len(vl_rows) == 0 or len(self.pool) == 0:
            return
        B = len(batch.records)
        distractor = self.pool[torch.from_numpy(self.rng.integers(0, len(self.pool), B))]
        swapped = batch.audio_features.roll(1, 0)
        swapped_has = batch.has_audio.roll(1, 0)
        swapped = torch.where(swapped_has.view(-1, 1, 1), swapped, distractor)  # (B, S, D)
        silent = None if self.silent is None else self.silent.expand(B, -1, -1)  # (B, S, D)
        vl = model.base.batch_rows(batch.vl, vl_rows)  # only VL-only questions are probed
        vl_prefix = prefix.rows(vl_rows)  # selected once for the three probes
        answers = {}
        for name, feats in (("pred_distractor", distractor), ("pred_silent", silent), ("pred_swapped", swapped)):
            if feats is None:
                continue
            with model.reusing_prefix(vl_prefix):
                answers[name] = model.generate_answers(vl, K, audio_features=feats[vl_rows],
                                                       max_new_tokens=self.max_new_tokens)
        for j, i in enumerate(vl_rows.tolist()):
            self.answers[batch.records[i].id] = {name: preds[j] for name, preds in answers.items()}


def _silent_features(model: SAFEModel) -> torch.Tensor | None:
    encoder = model.audio_encoder
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
