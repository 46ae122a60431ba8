"""Run a trained SAFE model over a split at every token budget: the outcome tables of Stage B and evaluation.

Per example: the base answer (budget 0) and its first-token logits (-> the policy state), then the answer at each
non-zero budget with the example's own audio, each starting from the base pass's prompt prefix (the decoder layers
below the first fusion block, the same at every budget: `SAFEModel.recording_prefix`). Scores use the same metric as
evaluation. Because the bandit's reward for every action is tabulated here, Stage B trains exactly and fast without
re-running the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from safe.data.datasets import Batch
from safe.eval.metrics import score
from safe.models.base_vl import BaseVLModel
from safe.models.prompt_prefix import PromptPrefix
from safe.models.safe_model import SAFEModel
from safe.rl.reward import OutcomeTable
from safe.rl.state_features import build_state, question_features


@dataclass
class Rollout:
    records: list
    states: np.ndarray  # (N, S)
    preds: list[list[str]]  # N x A answers, column a = token_budgets[a]
    scores: np.ndarray  # (N, A)
    has_audio: np.ndarray  # (N,) bool
    needs_audio: np.ndarray  # (N,) bool
    token_budgets: tuple[int, ...]

    def table(self) -> OutcomeTable:
        base = [p[0] for p in self.preds]
        changed = np.array([[p[a] != base[i] for a in range(len(self.token_budgets))] for i, p in enumerate(self.preds)])
        return OutcomeTable(
            states=self.states, scores=self.scores, changed=changed.astype(bool), needs_audio=self.needs_audio,
            has_audio=self.has_audio, token_budgets=self.token_budgets, ids=np.array([r.id for r in self.records]),
        )


@torch.no_grad()
def batch_states(base: BaseVLModel, batch: Batch, first_logits: torch.Tensor) -> torch.Tensor:
    """Policy state (B, S) for a collated batch, given the base answer's first-token logits (B, V)."""
    q = question_features(base, batch.vl.input_ids, batch.vl.attention_mask)  # (B, D + 1)
    return build_state(q, first_logits, batch.audio_stats, batch.has_audio)


@torch.no_grad()
def _answers_with_audio(model: SAFEModel, batch: Batch, budget: int, base_answers: list[str],
                        max_new_tokens: int, rows: torch.Tensor, rows_prefix: PromptPrefix) -> list[str]:
    """Each row's answer at `budget` with its own clip. A row without a clip stays at budget 0, whose answer is
    the base's exactly, so only the `rows` (R,) with a clip are generated, from the base pass's prefix of those rows."""
    if len(rows) == 0:
        return list(base_answers)
    with model.reusing_prefix(rows_prefix):
        if len(rows) == len(base_answers):
            return model.generate_answers(batch.vl, budget, audio_features=batch.audio_features,
                                          max_new_tokens=max_new_tokens)
        fused = model.generate_answers(model.base.batch_rows(batch.vl, rows), budget,
                                       audio_features=batch.audio_features[rows], max_new_tokens=max_new_tokens)
    answers = list(base_answers)
    for answer, i in zip(fused, rows.tolist()):
        answers[i] = answer
    return answers


@torch.no_grad()
def rollout(
    model: SAFEModel, batches: Iterable[Batch], max_new_tokens: int = 4, progress: bool = True, desc: str = "rollout",
    on_batch: Callable[[Batch, PromptPrefix], None] | None = None,
) -> Rollout:
    """`on_batch(batch, prefix)` runs after each batch's answers, with the base pass's prompt prefix (more fused
    passes over the same prompts can start from it: evaluation's robustness probes)."""
    budgets = model.token_budgets
    records, states, preds, scores, has, needs = [], [], [], [], [], []
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress):
        with model.recording_prefix() as recorder:
            base_answers, first_logits = model.generate_answers(batch.vl, 0, max_new_tokens=max_new_tokens,
                                                                return_first_logits=True)
        prefix = recorder.prefix
        rows = batch.has_audio.nonzero().flatten()  # (R,) the rows with a clip
        rows_prefix = prefix if len(rows) in (0, len(base_answers)) else prefix.rows(rows)  # once for every budget
        columns = [base_answers]
        for b in budgets[1:]:
            columns.append(_answers_with_audio(model, batch, b, base_answers, max_new_tokens, rows, rows_prefix))
        if on_batch is not None:
            on_batch(batch, prefix)
        states.append(batch_states(model.base, batch, first_logits).cpu().numpy())
        for i, record in enumerate(batch.records):
            row = [col[i] for col in columns]
            records.append(record)
            preds.append(row)
            scores.append([score(p, record.answer, record.answers) for p in row])
        has.append(batch.has_audio.numpy())
        needs.append(batch.needs_audio.numpy())
    return Rollout(
        records=records, states=np.concatenate(states).astype(np.float32), preds=preds,
        scores=np.asarray(scores, dtype=np.float32), has_audio=np.concatenate(has).astype(bool),
        needs_audio=np.concatenate(needs).astype(bool), token_budgets=tuple(budgets),
    )
