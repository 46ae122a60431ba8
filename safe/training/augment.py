"""Unknown words: question words replaced by the tokenizer's `<unk>`.

Why: the offline profiles' word-level tokenizer maps every word it never saw in training to `<unk>`, so a rephrased
question (the benchmark's held-out test phrasings: "the circle is painted in which color?") reaches the model with
`<unk>` where the new word was. Training never shows `<unk>`, so the fusion adapter's reaction to it is arbitrary:
with audio forced on, held-out phrasings change their answer far more often than questions phrased as in training
(docs/EXPERIMENTS.md#stage-b-learns-from-unk-rows). Replacing a share of validation question words by `<unk>`
measures that risk without the test split (`StageATrainer.unknown_word_flip_rate`), and Stage B learns from copies
of its rows altered this way, with the model's real outcomes on them (pipelines/stage_b.py,
`stage_b.unknown_word_rate`).

Training Stage A on such questions as well (KL to the base on the same altered prompt) cost validation audio
accuracy without making altered questions safe, so it was not kept (docs/EXPERIMENTS.md#stage-a-unk-training).
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from safe.data.datasets import Batch
from safe.models.base_vl import VLBatch


def question_word_mask(base, vl: VLBatch) -> torch.Tensor:
    """(B, T) bool on the batch's device: the question's own tokens (no chat-template, special, image, padding or
    answer tokens)."""
    mask = base.prompt_text_mask(vl).to(vl.input_ids.device)
    fmt = base.prompts.format
    template_ids = base.tokenizer(fmt.user + fmt.assistant, add_special_tokens=False)["input_ids"]
    excluded = torch.tensor(sorted(set(template_ids) | set(base.tokenizer.all_special_ids)), device=mask.device)
    return mask & ~torch.isin(vl.input_ids, excluded)


def with_unknown_words(
    vl: VLBatch, candidates: torch.Tensor, unk_id: int, rate: float, rngs: Sequence[np.random.Generator],
    at_least_one: bool = False,
) -> tuple[VLBatch, torch.Tensor]:
    """Replace each candidate token by `unk_id` with probability `rate` (and, with `at_least_one`, one drawn candidate
    when none was). Row b draws one number per candidate token, in order, from `rngs[b]`, so its replacements depend
    neither on its batch neighbours nor on the padding. Returns the new batch and the (B, T) mask of replaced tokens."""
    B = vl.input_ids.shape[0]
    if len(rngs) != B:
        raise ValueError(f"got {len(rngs)} random generators for a batch of {B} rows")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"unknown-word rate must be in [0, 1), got {rate}")
    replaced = torch.zeros_like(candidates)
    for b, rng in enumerate(rngs):
        positions = candidates[b].nonzero().squeeze(-1)  # (n_b,)
        hit = torch.from_numpy(rng.random(len(positions)) < rate).to(positions.device)
        if at_least_one and len(positions) and not hit.any():
            hit[int(rng.integers(len(positions)))] = True
        replaced[b, positions[hit]] = True
    input_ids = vl.input_ids.masked_fill(replaced, unk_id)
    return VLBatch(input_ids, vl.attention_mask, vl.pixel_values, vl.labels), replaced


def unknown_word_batches(batches: Iterable[Batch], base, rate: float, seed: int = 0,
                         at_least_one: bool = False) -> Iterator[Batch]:
    """`batches` with `rate` of every question's words replaced by `<unk>`, each row's draw keyed by (seed, its id):
    the same questions whichever batch holds them. Batches pass unchanged when the tokenizer has no `<unk>`."""
    unk_id = base.tokenizer.unk_token_id
    for batch in batches:
        if unk_id is None:
            yield batch
            continue
        rngs = [np.random.default_rng([seed, zlib.crc32(r.id.encode())]) for r in batch.records]
        vl, _ = with_unknown_words(batch.vl, question_word_mask(base, batch.vl), unk_id, rate, rngs, at_least_one)
        yield replace(batch, vl=vl)
