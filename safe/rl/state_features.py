"""The policy's state: only what is cheap BEFORE any audio is consumed.

state = [question embedding (D_llm) | base answer entropy, max-prob | audio rms, peak, duration | has_audio]

The base model answers first (budget 0 is the base exactly), so its confidence in that answer comes for free; the
question embedding is the mean of the base model's input embeddings over the text tokens (no layer runs); the audio
statistics need no encoder. Deciding from this state never costs an
audio-encoder forward.
"""

from __future__ import annotations

import torch

N_CONFIDENCE = 2
N_AUDIO = 4  # rms, peak, duration, has_audio


def state_dim(llm_hidden_size: int) -> int:
    return llm_hidden_size + N_CONFIDENCE + N_AUDIO


def question_features(base, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) prompt ids and mask -> (B, D): the base's question embedding."""
    return base.question_embedding(input_ids, attention_mask).float()


def answer_confidence(first_logits: torch.Tensor) -> torch.Tensor:
    """(B, V) logits of the first answer token -> (B, 2): normalised entropy and max probability."""
    logp = torch.log_softmax(first_logits.float(), dim=-1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1) / torch.log(torch.tensor(float(first_logits.shape[-1])))
    return torch.stack([entropy, p.max(-1).values], dim=-1)


def build_state(
    question: torch.Tensor, first_logits: torch.Tensor, audio_stats: torch.Tensor, has_audio: torch.Tensor,
) -> torch.Tensor:
    """(B, D) `question_features`, (B, V) base first-token logits, (B, 3) audio stats, (B,) bool -> (B, S)."""
    B = question.shape[0]
    for name, t in (("first_logits", first_logits), ("audio_stats", audio_stats), ("has_audio", has_audio)):
        if t.shape[0] != B:
            raise ValueError(f"{name} has batch size {t.shape[0]}, expected {B}")
    device = question.device  # the base model's (the audio stats come from the CPU side)
    first_logits, audio_stats, has_audio = first_logits.to(device), audio_stats.to(device), has_audio.to(device)
    stats = audio_stats.float() * has_audio.unsqueeze(-1).float()
    return torch.cat([
        question.float(), answer_confidence(first_logits), stats, has_audio.float().unsqueeze(-1),
    ], dim=-1)
