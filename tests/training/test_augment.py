"""Unknown-word augmentation: only question words change, reproducibly per row, and Stage A applies it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from safe.training.augment import question_word_mask, with_unknown_words


def _tokens(base, ids, mask):
    return base.tokenizer.convert_ids_to_tokens(ids[mask].tolist())


def test_question_word_mask_selects_the_question_words_only(tiny_base):
    images = [Image.new("RGB", (32, 32)), None]
    vl = tiny_base.encode(["what color is the circle?", "how many beeps do you hear?"], images, answers=["red", "two"])
    mask = question_word_mask(tiny_base, vl)
    assert _tokens(tiny_base, vl.input_ids[0], mask[0]) == ["what", "color", "is", "the", "circle", "?"]
    assert _tokens(tiny_base, vl.input_ids[1], mask[1]) == ["how", "many", "beeps", "do", "you", "hear", "?"]


def test_unknown_words_replace_candidates_only_and_do_not_depend_on_padding(tiny_base):
    unk = tiny_base.tokenizer.unk_token_id
    short = tiny_base.encode(["how many shapes are there?"], [None], answers=["one"])
    padded = tiny_base.encode(["how many shapes are there?", "what color is the circle in the blue one?"],
                              [None, None], answers=["one", "red"])
    rng = lambda: np.random.default_rng(7)  # noqa: E731
    alone, hit_alone = with_unknown_words(short, question_word_mask(tiny_base, short), unk, 0.5, [rng()])
    both, hit_both = with_unknown_words(padded, question_word_mask(tiny_base, padded), unk, 0.5,
                                        [rng(), np.random.default_rng(1)])
    # Same row, same generator: the same words are replaced whatever the batch's padded length.
    T = alone.input_ids.shape[1]
    assert torch.equal(alone.input_ids[0], both.input_ids[0, -T:])
    assert 0 < int(hit_alone.sum()) < 6
    # Nothing outside the question changes: template, answer and labels stay.
    untouched = ~question_word_mask(tiny_base, padded)
    assert torch.equal(both.input_ids[untouched], padded.input_ids[untouched])
    assert torch.equal(both.labels, padded.labels)
    assert (both.input_ids[hit_both] == unk).all()
    same, none_hit = with_unknown_words(padded, question_word_mask(tiny_base, padded), unk, 0.0,
                                        [rng(), rng()])
    assert torch.equal(same.input_ids, padded.input_ids) and not none_hit.any()


def test_bad_rate_or_generator_count_is_refused(tiny_base, tiny_batch):
    mask = question_word_mask(tiny_base, tiny_batch)
    with pytest.raises(ValueError, match="rate"):
        with_unknown_words(tiny_batch, mask, 1, 1.0, [np.random.default_rng(0)] * 3)
    with pytest.raises(ValueError, match="3 rows"):
        with_unknown_words(tiny_batch, mask, 1, 0.1, [np.random.default_rng(0)])


def test_unknown_word_batches_alter_every_row_reproducibly(tiny_base):
    from types import SimpleNamespace

    from safe.data.datasets import Batch
    from safe.training.augment import unknown_word_batches

    questions = ["how many shapes are there?", "what color is the circle?"]
    vl = tiny_base.encode(questions, [None, None])
    records = [SimpleNamespace(id=f"ex{i}") for i in range(2)]
    batch = Batch(vl, records, torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, dtype=torch.bool),
                  torch.zeros(2, dtype=torch.bool), [None, None])
    unk = tiny_base.tokenizer.unk_token_id
    first = next(unknown_word_batches([batch], tiny_base, 0.01, seed=3, at_least_one=True))
    again = next(unknown_word_batches([batch], tiny_base, 0.01, seed=3, at_least_one=True))
    assert torch.equal(first.vl.input_ids, again.vl.input_ids)
    assert ((first.vl.input_ids == unk).sum(1) >= 1).all()  # a rate this low still alters every question
    assert first.records is batch.records and torch.equal(first.vl.attention_mask, batch.vl.attention_mask)
