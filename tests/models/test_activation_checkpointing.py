"""Activation checkpointing of the frozen LM (the llava profile's Stage A): same loss and gradients for the
trainable parts, fewer activations kept for backward, the decoder layers recomputed, the fusion blocks run once.
(The memory it saves at real size is measured by benchmarks/bench_llava_gpu.py.)"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from safe.config import build_config
from safe.models.base_vl import BaseVLModel, build_llava, build_processor, build_subword_tokenizer
from safe.models.safe_model import SAFEArchitecture, SAFEModel
from safe.training.losses import answer_loss, answer_positions

TEXTS = ["what color is the circle ?", "how many beeps do you hear ?", "red blue one two three"]


def _safe_model(checkpointing: bool) -> tuple[SAFEModel, object]:
    cfg = build_config({"profile": "tiny", "model": {"text_layers": 3, "fusion_layers": [0, 2]}}).model
    tokenizer = build_subword_tokenizer(TEXTS)
    torch.manual_seed(0)
    base = BaseVLModel(build_llava(cfg, tokenizer, 32), build_processor(tokenizer, 32, 8))
    if checkpointing:
        base.enable_activation_checkpointing()
    torch.manual_seed(1)
    model = SAFEModel(base, SAFEArchitecture(audio_embed_dim=8, fusion_layers=(0, 2), projector_hidden=16))
    with torch.no_grad():
        for block in model.fusion.values():  # every lora_B away from 0, so every LoRA weight gets a gradient
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                getattr(block, name).lora_B["default"].weight.normal_(std=0.5)
            block.question_query.weight.normal_(std=0.5)  # and the words' query away from 0: its norm learns too
    images = [Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))]
    batch = base.encode(["what color is the circle ?", "how many beeps do you hear ?"], images, answers=["red", "two"])
    return model, batch


def _step(model: SAFEModel, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, int]]:
    """Loss, gradients of the trainable parameters, the bytes autograd kept for backward, and how often attention
    (inside the checkpointed layer forward) and the fusion blocks (forward hooks, outside it) ran."""
    calls = {"attention": 0, "fusion": 0, "kept_bytes": 0}

    def keep(tensor):
        calls["kept_bytes"] += tensor.numel() * tensor.element_size()
        return tensor

    def count(kind):
        def hook(*_):
            calls[kind] += 1
        return hook

    handles = [layer.self_attn.register_forward_hook(count("attention")) for layer in model.base.decoder_layers]
    handles += [block.register_forward_hook(count("fusion")) for block in model.fusion.values()]
    torch.manual_seed(2)
    feats = torch.randn(2, 8)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        logits = model(batch, [12, 4], audio_features=feats)  # (B, T, V)
    answer_loss(logits, batch.labels, answer_positions(batch.labels).sum()).backward()
    for handle in handles:
        handle.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    loss = answer_loss(logits.detach(), batch.labels, answer_positions(batch.labels).sum())
    return loss, grads, calls


def test_checkpointing_keeps_loss_and_gradients_and_recomputes_the_layers():
    plain_loss, plain_grads, plain_calls = _step(*_safe_model(checkpointing=False))
    model, batch = _safe_model(checkpointing=True)
    assert all(layer.training for layer in model.base.decoder_layers) and not model.base.llava.training
    ckpt_loss, ckpt_grads, ckpt_calls = _step(model, batch)
    assert torch.allclose(plain_loss, ckpt_loss, atol=1e-6)
    assert plain_grads.keys() == ckpt_grads.keys() and len(plain_grads) > 0
    for name, grad in plain_grads.items():
        assert grad.abs().sum() > 0, name  # the fusion blocks and the projector do get gradients
        torch.testing.assert_close(ckpt_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    # 3 layers, fusion after layers 0 and 2: the layers are recomputed in backward; the fusion blocks run once.
    assert (plain_calls["attention"], plain_calls["fusion"]) == (3, 2)
    assert ckpt_calls["attention"] > 3 and ckpt_calls["fusion"] == 2
    # Nothing before the first fusion block keeps activations (transformers' input-grad hook is undone), and the
    # checkpointed layers keep only their inputs.
    assert ckpt_calls["kept_bytes"] < 0.8 * plain_calls["kept_bytes"]


def test_checkpointing_survives_eval_and_train_switches_and_leaves_generation_alone():
    model, batch = _safe_model(checkpointing=True)
    model.eval()
    model.train()
    assert all(layer.training for layer in model.base.decoder_layers)
    assert not model.base.llava.model.vision_tower.training
    reference, _ = _safe_model(checkpointing=False)
    assert model.generate_answers(batch, [12, 0], audio_features=torch.ones(2, 8)) == reference.generate_answers(
        batch, [12, 0], audio_features=torch.ones(2, 8))


def test_checkpointing_refuses_a_layer_with_dropout():
    model, _ = _safe_model(checkpointing=False)
    model.base.llava.config.text_config.attention_dropout = 0.1
    with pytest.raises(ValueError, match="attention_dropout"):
        model.base.enable_activation_checkpointing()
