import pytest
import torch

from safe.models.fusion_adapter import CrossAttentionBlock


def test_fresh_block_returns_input_unchanged():
    block = CrossAttentionBlock(hidden_size=32, num_attention_heads=4)
    h, a = torch.randn(2, 5, 32), torch.randn(2, 4, 32)
    assert torch.equal(block(h, a), h)


def trained_block():
    block = CrossAttentionBlock(32, 4)
    with torch.no_grad():
        block.o_proj.lora_B.weight.normal_()
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
