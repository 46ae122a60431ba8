"""base_vl's question language-model loss (`base_vl.question_lm_weight`): the from-scratch LM reads audio questions."""

from __future__ import annotations

import torch

from safe.config import BaseVLConfig, build_config
from safe.models.base_vl import BaseVLModel, PromptEncoder
from safe.training.base_vl import _question_lm_loss, train_base_vl

AUDIO_QUESTION = "how many beeps do you hear?"  # the bench's audio rows: never a VL training question


def _text_loss(folder, cut: float = 0.0) -> float:
    """Next-token loss of the saved base on the audio question's text-only prompt (its tokens cut into pieces with
    probability `cut`, seeded)."""
    import numpy as np

    base = BaseVLModel.from_pretrained(folder)
    with torch.no_grad():
        return float(_question_lm_loss(base.llava, PromptEncoder(base.processor), [AUDIO_QUESTION] * 8, base.device, 1,
                                       np.random.default_rng(0), cut))


def _train_tiny_base(bench, out, **base_vl):
    """A tiny base trained on the bench with `base_vl` settings; returns its report."""
    manifest, _ = bench
    model_cfg = build_config({"profile": "tiny", "model": {"vision_hidden": 32, "text_hidden": 32,
                                                           "text_intermediate": 64}}).model
    cfg = BaseVLConfig(epochs=30, batch_size=16, lr=3e-3, target_val_acc=1.0, **base_vl)
    return train_base_vl(manifest, model_cfg, cfg, 32, out, progress=False)


def test_question_lm_loss_teaches_the_base_the_audio_questions_words(bench, tmp_path):
    losses = {}
    for weight in (0.0, 1.0):
        report = _train_tiny_base(bench, tmp_path / f"base_{weight}", question_lm_weight=weight)
        assert report.best_val_acc >= 0.9, report.history  # the VL task still trains alongside
        losses[weight] = _text_loss(tmp_path / f"base_{weight}")
    # Without the loss the base never read "beeps" or "hear"; with it, it predicts the question's words.
    assert losses[1.0] < 0.8 * losses[0.0], losses


def test_split_subwords_cuts_tokens_into_pieces_of_the_same_text_seeded(tiny_base):
    import numpy as np

    from safe.training.base_vl import question_batch, split_subwords

    tokenizer = tiny_base.processor.tokenizer
    ids = tokenizer(f"{tokenizer.bos_token} what color is the circle?")["input_ids"]
    cut = split_subwords(tokenizer, ids, np.random.default_rng(0), 0.5)
    assert len(cut) > len(ids) and tokenizer.decode(cut) == tokenizer.decode(ids)  # smaller pieces, same text
    assert cut == split_subwords(tokenizer, ids, np.random.default_rng(0), 0.5)  # seeded
    assert cut[0] == tokenizer.bos_token_id  # special tokens are never cut
    assert split_subwords(tokenizer, ids, np.random.default_rng(0), 0.0) == ids
    prompts = PromptEncoder(tiny_base.processor)
    plain = prompts.encode([AUDIO_QUESTION], [None])
    assert torch.equal(question_batch(prompts, [AUDIO_QUESTION]).input_ids, plain.input_ids)  # rate 0: as before
    batch = question_batch(prompts, [AUDIO_QUESTION, "red?"], np.random.default_rng(1), 0.5)
    assert batch.attention_mask[1, 0] == 0 and batch.attention_mask[:, -1].all()  # left-padded


def test_subword_dropout_trains_the_pieces_an_unseen_word_breaks_into(bench, tmp_path):
    """Without it the LM only ever reads whole training tokens: the pieces of a word it never saw keep their initial
    embeddings. The measure: next-token loss on the audio question cut into pieces."""
    losses = {}
    for rate in (0.0, 0.5):
        _train_tiny_base(bench, tmp_path / f"base_{rate}", question_lm_weight=1.0, subword_dropout=rate)
        losses[rate] = _text_loss(tmp_path / f"base_{rate}", cut=0.5)
    assert losses[0.5] < 0.95 * losses[0.0], losses  # equal if the pieces stayed untrained
