"""Stage A losses: new-task cross-entropy, retention KL(base || SAFE), the gate loss, the grounding loss on the
fusion attention and a diagonal-Fisher (EWC) penalty."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from safe.models.audio_encoders import segment_bounds


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T-1) bool: positions whose next token is a labelled answer token (where logits[:, :-1] predict)."""
    return labels[:, 1:] != -100


def answer_window(labels: torch.Tensor) -> int:
    """How many trailing positions the answer losses read: from the one before the batch's earliest labelled token
    to the end (left padding puts every answer last). Pass it as `logits_to_keep` and crop labels to
    `labels[:, -n:]`: the LM head (a 49k vocabulary on smol) then runs on the answers alone, same losses."""
    labelled = (labels != -100).any(0).nonzero()  # (n_labelled_columns, 1)
    if len(labelled) == 0:
        return labels.shape[1]
    return labels.shape[1] - max(int(labelled[0]) - 1, 0)


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over labelled answer tokens. logits (B, T, V), labels (B, T) with -100 elsewhere.

    Mean over the labelled tokens, or their sum divided by `normalizer` (the token count of the GLOBAL batch when
    the batch is split across processes, so every process's share adds up to the one-process mean).
    Returns 0 (with grad) when nothing is labelled."""
    labelled = labels[:, 1:] != -100  # (B, T-1)
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    # Only the labelled slots are upcast: (B, T, V) in float32 would dominate memory at a 32k vocabulary.
    picked = logits[:, :-1][labelled].float()  # (N, V)
    targets = labels[:, 1:][labelled]  # (N,)
    if normalizer is None:
        return nn.functional.cross_entropy(picked, targets)
    return nn.functional.cross_entropy(picked, targets, reduction="sum") / normalizer


def retention_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, positions: torch.Tensor,
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over `positions` of KL(teacher || student) between next-token distributions (or the sum / `normalizer`,
    as in `answer_loss`).

    student/teacher logits (B, T, V); positions (B, T-1) bool selecting the prediction slots to match.
    Exactly 0 when the student equals the teacher; 0 (with grad) when no position is selected.
    """
    if not bool(positions.any()):
        return student_logits.sum() * 0.0
    s = torch.log_softmax(student_logits[:, :-1][positions].float(), dim=-1)  # (N, V)
    t = torch.log_softmax(teacher_logits[:, :-1][positions].float(), dim=-1)  # (N, V)
    per_position = (t.exp() * (t - s)).sum(-1)  # (N,)
    return per_position.mean() if normalizer is None else per_position.sum() / normalizer


def gate_loss(gates: torch.Tensor, needs_audio: torch.Tensor, rows: torch.Tensor,
              normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy between each fusion block's learned gate and whether the question needs audio, over
    `rows` (the rows that carry a clip): open for audio-dependent questions, closed for VL-only ones.

    gates (B, L) in [0, 1], one per fusion block; needs_audio, rows (B,) bool. Mean over rows and blocks (or the
    sum over rows / `normalizer`, as in `answer_loss`); 0 (with grad) when no row is selected."""
    if not bool(rows.any()):
        return gates.sum() * 0.0
    g = gates[rows].float().clamp(1e-6, 1.0 - 1e-6)  # (N, L)
    target = needs_audio[rows].to(g.dtype).unsqueeze(1).expand_as(g)  # (N, L)
    per_row = nn.functional.binary_cross_entropy(g, target, reduction="none").mean(1)  # (N,)
    return per_row.mean() if normalizer is None else per_row.sum() / normalizer


class FisherPenalty:
    """EWC: sum_i F_i (theta_i - theta0_i)^2 over the trainable parameters, with F the diagonal Fisher.

    F is estimated as the mean squared gradient of the VL-only new-task loss over a few batches (a batch-level
    empirical Fisher: cheap, and enough to tell which adapter weights the VL answers are sensitive to).
    The anchor theta0 is the parameters' value when the penalty is built.
    """

    def __init__(self, params: dict[str, nn.Parameter], fisher: dict[str, torch.Tensor]):
        self.params = params
        self.fisher = {k: v.detach().clone() for k, v in fisher.items()}
        self.anchor = {k: p.detach().clone() for k, p in params.items()}

    @classmethod
    def estimate(
        cls, params: dict[str, nn.Parameter], loss_fn: Callable[[object], torch.Tensor], batches: Iterable[object],
        reduce_grad: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> "FisherPenalty":
        """`reduce_grad` turns one process's gradient into the global batch's (a sum over processes, with `loss_fn`
        normalised by the global token count) when each process holds a share of every batch."""
        fisher = {k: torch.zeros_like(p) for k, p in params.items()}
        n = 0
        for batch in batches:
            for p in params.values():
                p.grad = None
            loss_fn(batch).backward()
            for k, p in params.items():
                grad = p.grad.detach() if p.grad is not None else torch.zeros_like(p)
                if reduce_grad is not None:  # every process takes part, even where its share left no gradient
                    grad = reduce_grad(grad)
                fisher[k] += grad ** 2
            n += 1
        for p in params.values():
            p.grad = None
        if n:
            fisher = {k: v / n for k, v in fisher.items()}
        # Raw (unnormalised) Fisher: parameters the VL answers do not depend on stay free to learn the audio task.
        return cls(params, fisher)

    def coverage(self) -> float:
        """Share of the parameter tensors with at least one non-zero Fisher entry (what the penalty can see)."""
        return sum(bool(torch.any(f != 0)) for f in self.fisher.values()) / max(len(self.fisher), 1)

    def __call__(self) -> torch.Tensor:
        device = next(iter(self.params.values())).device
        out = torch.zeros((), device=device)
        for k, p in self.params.items():
            out = out + (self.fisher[k] * (p - self.anchor[k]) ** 2).sum()
        return out


def grounding_targets(spans: torch.Tensor, budgets: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Which audio tokens hold where the answer plays: (B, 2) span as shares of the clip (NaN: none), (B,) budgets
    -> (B, K) bool. Among a row's first `budget` tokens, those whose stretch of the clip lies most inside the span
    (the finest ones the budget has): the second of 12 sounds is the quarter at budget 4 and its own twelfth at 12.
    Rows without a span or audio get no target."""
    bounds = segment_bounds().to(spans.device)[:num_tokens]  # (K, 2)
    overlap = (torch.minimum(bounds[:, 1], spans[:, 1:]) - torch.maximum(bounds[:, 0], spans[:, :1])).clamp(min=0)
    inside = (overlap / (bounds[:, 1] - bounds[:, 0])).nan_to_num(0.0)  # (B, K) share of each token's stretch
    usable = torch.arange(num_tokens, device=spans.device) < budgets.to(spans.device).unsqueeze(1)  # (B, K)
    inside = inside * usable
    best = inside.amax(-1, keepdim=True)  # (B, 1)
    return (inside >= best - 1e-6) & (best > 0)


def target_attention(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Attention mass (mean over heads) each query position puts on the target tokens: (B, H, T, K) weights,
    (B, K) bool targets -> (B, T)."""
    return (probs.mean(1) * targets.unsqueeze(1).to(probs.dtype)).sum(-1)


def grounding_loss(attentions: list[torch.Tensor], targets: torch.Tensor, labels: torch.Tensor,
                   normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """-log of the attention mass (mean over heads) the answer's positions put on the target tokens, averaged over
    fusion blocks; summed over (row, position) pairs of rows with a target, divided by `normalizer` (default their
    count). attentions: one (B, H, T, K) per block; targets (B, K) bool; labels (B, T) with -100 off the answer."""
    B, T = labels.shape
    where = torch.zeros(B, T, dtype=torch.bool, device=labels.device)
    where[:, :-1] = answer_positions(labels)  # positions that predict an answer token
    where &= targets.any(-1, keepdim=True)
    if not attentions or not bool(where.any()):
        return torch.zeros((), device=labels.device)
    nll = torch.zeros((), device=labels.device)
    for probs in attentions:
        nll = nll - torch.log(target_attention(probs, targets)[where].clamp(min=1e-6)).sum()
    n = where.sum() if normalizer is None else normalizer
    return nll / len(attentions) / n
