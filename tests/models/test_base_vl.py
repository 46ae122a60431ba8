import pytest
import torch

from safe.models.base_vl import BaseVLModel, CheckpointError


def test_base_is_frozen_and_stays_in_eval(tiny_base):
    assert not any(p.requires_grad for p in tiny_base.parameters())
    tiny_base.train()
    assert not tiny_base.llava.training


def test_prompt_has_image_placeholder_and_answer_labels(tiny_base, tiny_batch):
    image_id = tiny_base.llava.config.image_token_id
    n_image_tokens = (tiny_batch.input_ids == image_id).sum(1)
    assert n_image_tokens.tolist() == [16, 0, 16]  # (32 / 8)^2 patches, none for the text-only row
    assert tiny_batch.pixel_values.shape == (2, 3, 32, 32)
    # Labels cover exactly the answer word and the end-of-sequence token, at the end (left padding).
    assert ((tiny_batch.labels != -100).sum(1) == 2).all()
    eos = tiny_base.tokenizer.eos_token_id
    assert (tiny_batch.labels[:, -1] == eos).all()


def test_position_ids_ignore_left_padding(tiny_batch):
    pos = tiny_batch.position_ids
    lengths = tiny_batch.attention_mask.sum(1)
    assert (pos.max(1).values == lengths - 1).all()


def test_logits_and_generation(tiny_base, tiny_batch):
    logits = tiny_base(tiny_batch)
    assert logits.shape == (*tiny_batch.input_ids.shape, len(tiny_base.tokenizer))
    prompts = tiny_base.encode(["what color is the circle?"], [None])
    answers, first = tiny_base.generate_answers(prompts, max_new_tokens=2, return_first_logits=True)
    assert len(answers) == 1 and first.shape == (1, len(tiny_base.tokenizer))


def test_batch_rows_keep_each_rows_logits_and_its_own_image(tiny_base, tiny_batch):
    """Row 1 has no image, rows 0 and 2 do: a sub-batch must hand each row its own image (or none)."""
    full = tiny_base(tiny_batch)  # (3, T, V)
    for rows in ([2], [1, 2], [0, 2], [1]):
        sub = tiny_base.batch_rows(tiny_batch, torch.tensor(rows))
        n_images = sum(r != 1 for r in rows)
        assert (sub.pixel_values is None) == (n_images == 0)
        if n_images:
            assert sub.pixel_values.shape[0] == n_images
        assert torch.equal(sub.labels, tiny_batch.labels[rows])
        assert torch.allclose(tiny_base(sub), full[rows], atol=1e-5), rows


def test_answer_logprobs_are_negative_sums(tiny_base, tiny_batch):
    lp = tiny_base.answer_logprobs(tiny_base(tiny_batch), tiny_batch.labels)
    assert lp.shape == (3,) and (lp < 0).all()


def test_question_embedding_excludes_image_tokens(tiny_base):
    a = tiny_base.encode(["how many shapes are there?"], [None])
    from PIL import Image

    b = tiny_base.encode(["how many shapes are there?"], [Image.new("RGB", (32, 32))])
    qa = tiny_base.question_embedding(a.input_ids, a.attention_mask)
    qb = tiny_base.question_embedding(b.input_ids, b.attention_mask)
    assert torch.allclose(qa, qb, atol=1e-6)


def test_question_embedding_weighs_every_word_the_same(tiny_base):
    batch = tiny_base.encode(["how many shapes are there?"], [None])
    before = tiny_base.question_embedding(batch.input_ids, batch.attention_mask)
    weight = tiny_base.llava.get_input_embeddings().weight
    row = tiny_base.tokenizer.convert_tokens_to_ids("\u0120shapes")
    original = weight[row].clone()
    with torch.no_grad():
        weight[row] *= 10.0  # a word trained to a larger norm must not dominate the mean
    try:
        after = tiny_base.question_embedding(batch.input_ids, batch.attention_mask)
    finally:
        with torch.no_grad():
            weight[row] = original
    assert torch.allclose(before, after, atol=1e-6)


def test_unseen_words_become_subword_tokens_never_unknown(tiny_base):
    """Held-out phrasings use words training never saw: the byte-level BPE spells them, it has no `<unk>`."""
    assert tiny_base.tokenizer.unk_token_id is None
    batch = tiny_base.encode(["how many zzzz qqqq are there?"], [None])
    tokens = tiny_base.tokenizer.convert_ids_to_tokens(batch.input_ids[0].tolist())
    assert "".join(tokens).replace("\u0120", " ").count("zzzz") == 1
    assert tiny_base.tokenizer.decode(batch.input_ids[0], skip_special_tokens=True).strip().endswith(
        "how many zzzz qqqq are there? assistant:")


def test_checkpoint_folder_missing_files_is_named(tmp_path, tiny_base):
    with pytest.raises(CheckpointError, match="missing"):
        BaseVLModel.from_pretrained(tmp_path)
    tiny_base.save_pretrained(tmp_path / "ok")
    loaded = BaseVLModel.from_pretrained(tmp_path / "ok")
    (tmp_path / "ok" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        BaseVLModel.from_pretrained(tmp_path / "ok")
    assert loaded.hidden_size == tiny_base.hidden_size


def test_mismatched_lengths_raise(tiny_base):
    with pytest.raises(ValueError, match="questions"):
        tiny_base.encode(["a", "b"], [None])
