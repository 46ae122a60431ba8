import pytest
import torch

from safe.models.projectors import AudioProjector


def test_pooled_and_sequence_inputs():
    proj = AudioProjector(audio_embed_dim=16, llm_hidden_size=32, num_audio_tokens=12)
    assert proj(torch.randn(2, 16)).shape == (2, 12, 32)
    assert proj(torch.randn(2, 7, 16)).shape == (2, 12, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1] * 7], dtype=torch.bool)
    seq = torch.randn(2, 7, 16)
    masked = proj(seq, mask=mask)
    assert torch.allclose(masked[0], proj(seq[0:1, :3])[0], atol=1e-6)  # padding frames are ignored


def test_budgets_are_nested():
    proj = AudioProjector(16, 32, 12)
    x = torch.randn(3, 16)
    full = proj(x)
    for k in (0, 4, 8, 12):
        assert torch.equal(proj(x, num_tokens=k), full[:, :k])


def test_bad_inputs_name_the_problem():
    proj = AudioProjector(16, 32, 12)
    with pytest.raises(ValueError, match="expects 16, got 15"):
        proj(torch.randn(2, 15))
    with pytest.raises(ValueError, match=r"num_tokens must be in \[0, 12\]"):
        proj(torch.randn(2, 16), num_tokens=13)
    with pytest.raises(ValueError, match="shape"):
        proj(torch.randn(16))
