import pytest
import torch

from safe.models.fusion_adapter import CrossAttentionBlock, floor_gate


def test_fresh_block_returns_input_unchanged():
    block = CrossAttentionBlock(hidden_size=32, num_attention_heads=4)
    h, a = torch.randn(2, 5, 32), torch.randn(2, 4, 32)
    assert torch.equal(block(h, a), h)


def test_adds_nothing_exactly_while_the_output_projection_is_zero():
    block = CrossAttentionBlock(hidden_size=32, num_attention_heads=4)
    with torch.no_grad():  # every other trainable tensor moved: the block is still exact
        for name, p in block.named_parameters():
            if p.requires_grad and "o_proj.lora_B" not in name:
                p.normal_()
    h, a = torch.randn(2, 5, 32), torch.randn(2, 4, 32)
    assert block.adds_nothing() and torch.equal(block(h, a), h)
    assert not trained_block().adds_nothing()


def trained_block():
    block = CrossAttentionBlock(32, 4)
    with torch.no_grad():
        block.o_proj.lora_B["default"].weight.normal_()
    return block


def test_gate_in_unit_interval_and_forced_zero_is_exact():
    block = trained_block()
    h, a = torch.randn(2, 5, 32), torch.randn(2, 4, 32)
    assert 0.0 <= float(block.gate.detach()) <= 1.0
    assert not torch.equal(block(h, a), h)
    assert torch.equal(block(h, a, gate=0.0), h)
    per_example = block(h, a, gate=torch.tensor([0.0, 1.0]))
    assert torch.equal(per_example[0], h[0]) and not torch.equal(per_example[1], h[1])


def test_examples_without_audio_tokens_are_untouched():
    block = trained_block()
    h, a = torch.randn(3, 5, 32), torch.randn(3, 4, 32)
    mask = torch.tensor([[True] * 4, [False] * 4, [True, True, False, False]])
    out = block(h, a, audio_mask=mask)
    assert torch.equal(out[1], h[1]) and not torch.equal(out[0], h[0])
    # A masked token has no influence.
    a2 = a.clone()
    a2[2, 2:] = 100.0
    assert torch.allclose(block(h, a2, audio_mask=mask)[2], out[2])


def test_low_rank_parameter_count():
    block = CrossAttentionBlock(64, 4, rank=8)
    lora = sum(p.numel() for n, p in block.named_parameters() if "lora" in n)
    assert lora == 4 * (64 * 8 + 8 * 64)


def test_shape_errors():
    block = CrossAttentionBlock(32, 4)
    with pytest.raises(ValueError, match="do not match"):
        block(torch.randn(2, 5, 32), torch.randn(3, 4, 32))
    with pytest.raises(ValueError, match="divisible"):
        CrossAttentionBlock(30, 4)


def test_attention_projections_are_frozen_linears_with_peft_lora():
    from peft.tuners.lora import Linear as LoraLinear

    block = CrossAttentionBlock(32, 4, rank=4)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        layer = getattr(block, name)
        assert isinstance(layer, LoraLinear)
        assert not layer.base_layer.weight.requires_grad
        assert layer.lora_A["default"].weight.requires_grad and layer.lora_B["default"].weight.requires_grad
        assert torch.count_nonzero(layer.lora_B["default"].weight) == 0  # peft's init: the update starts at 0
    assert torch.count_nonzero(block.o_proj.base_layer.weight) == 0  # frozen zero output: identity at init
    trainable = {n for n, p in block.named_parameters() if p.requires_grad}
    assert "gate_logit" in trainable and "query_norm.weight" in trainable
    assert not any("base_layer" in n for n in trainable)


def test_host_initialisation_copies_the_decoder_attention_and_names_a_shape_mismatch():
    host = torch.nn.Module()
    for name in ("q_proj", "k_proj", "v_proj"):
        setattr(host, name, torch.nn.Linear(32, 32, bias=False))
    block = CrossAttentionBlock(32, 4, init_from=host)
    assert torch.equal(block.k_proj.base_layer.weight, host.k_proj.weight)
    h, a = torch.randn(2, 5, 32), torch.randn(2, 4, 32)
    assert torch.equal(block(h, a), h)  # still the identity
    host.k_proj = torch.nn.Linear(32, 8, bias=False)  # grouped-query attention: k/v narrower than the hidden size
    with pytest.raises(ValueError, match="k_proj.*fusion_init: random"):
        CrossAttentionBlock(32, 4, init_from=host)


def test_gate_reads_the_questions_most_audio_like_word_however_long_the_sentence():
    """One word the gate scores high ("beeps") opens it the same amount among 2 or 12 other words; the sentence mean
    would dilute it, and a rephrasing that only adds words would close the gate."""
    torch.manual_seed(0)
    D = 16
    block = CrossAttentionBlock(hidden_size=D, num_attention_heads=2, rank=2)
    with torch.no_grad():
        block.gate_proj.weight.zero_()
        block.gate_proj.weight[0, :2] = torch.tensor([4.0, -4.0])  # the gate's "audio" direction
    word = torch.zeros(D)
    word[0] = 1.0  # after the block's LayerNorm: the direction the gate scores high
    fillers = torch.randn(12, D)
    fillers[:, :2] = 0.0  # words the gate scores 0 (neither audio nor not)

    def gate(n_fillers: int, with_word: bool = True) -> float:
        rows = [fillers[:n_fillers]] + ([word.unsqueeze(0)] if with_word else [])
        hidden = torch.cat(rows).unsqueeze(0)  # (1, T, D)
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool)
        with torch.no_grad():
            return float(block.example_gate(block.question_summary(hidden, mask)))

    assert gate(2) == pytest.approx(gate(12), abs=1e-3)
    assert gate(12) > 0.9 and gate(12, with_word=False) < gate(12) - 0.3


def test_floor_gate_shuts_low_gates_and_keeps_the_gradient_of_open_ones():
    gate = torch.tensor([0.2, 0.5, 0.9], requires_grad=True)
    floored = floor_gate(gate, 0.5)
    assert torch.equal(floored, torch.tensor([0.0, 0.5, 0.9]))
    floored.sum().backward()
    assert gate.grad.tolist() == [0.0, 1.0, 1.0]
    assert floor_gate(gate, 0.0) is gate
