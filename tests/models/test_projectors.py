import pytest
import torch

from safe.models.audio_encoders import NUM_SEGMENTS, segment_order, temporal_segments
from safe.models.projectors import AudioProjector


def test_seed_pooled_call_keeps_working():
    proj = AudioProjector(audio_embed_dim=512, llm_hidden_size=768, num_audio_tokens=8)
    assert proj(torch.randn(2, 512)).shape == (2, 8, 768)


def test_pooled_input_is_one_segment_repeated():
    proj = AudioProjector(16, 32, 12)
    pooled = torch.randn(2, 16)
    assert torch.allclose(proj(pooled), proj(pooled.unsqueeze(1).expand(2, 12, 16)), atol=1e-6)


def test_segment_and_frame_inputs():
    proj = AudioProjector(audio_embed_dim=16, llm_hidden_size=32, num_audio_tokens=12)
    assert proj(torch.randn(2, NUM_SEGMENTS, 16)).shape == (2, 12, 32)
    mask = torch.tensor([[1] * 30 + [0] * 10, [1] * 40], dtype=torch.bool)
    frames = torch.randn(2, 40, 16)
    masked = proj(frames, mask=mask)
    assert masked.shape == (2, 12, 32)
    alone = proj(frames[0:1, :30], mask=torch.ones(1, 30, dtype=torch.bool))
    assert torch.allclose(masked[0], alone[0], atol=1e-5)  # padding frames are ignored


def test_budgets_are_nested_exactly():
    proj = AudioProjector(16, 32, 12)
    for x in (torch.randn(3, 16), torch.randn(3, NUM_SEGMENTS, 16)):
        full = proj(x)
        for k in (0, 4, 8, 12):
            assert torch.equal(proj(x, num_tokens=k), full[:, :k])


def test_token_depends_only_on_its_own_segment():
    """Budget k sees segments 0..k-1 only: changing a later (finer) segment leaves the first k tokens alone."""
    proj = AudioProjector(16, 32, 12)
    x = torch.randn(2, NUM_SEGMENTS, 16)
    y = x.clone()
    y[:, 8:] = torch.randn(2, 4, 16)
    assert torch.equal(proj(x, num_tokens=8), proj(y, num_tokens=8))
    assert not torch.allclose(proj(x)[:, 8:], proj(y)[:, 8:])


def test_segment_order_is_coarse_to_fine():
    order = segment_order(4, 12)
    assert order[:4] == [(4, 0), (4, 1), (4, 2), (4, 3)]  # budget 4: the quarters
    assert order[4:8] == [(12, 0), (12, 3), (12, 6), (12, 9)]  # then the first twelfth of every quarter
    assert order[8:] == [(12, 1), (12, 4), (12, 7), (12, 10)]
    with pytest.raises(ValueError, match="multiple"):
        segment_order(5, 12)


def test_temporal_segments_coarse_to_fine_values():
    frames = torch.arange(24, dtype=torch.float32).view(1, 24, 1)  # frame t has value t
    segs = temporal_segments(frames).flatten().tolist()
    assert segs[:4] == [2.5, 8.5, 14.5, 20.5]  # quarter means
    assert segs[4:8] == [0.5, 6.5, 12.5, 18.5]  # twelfths 0, 3, 6, 9
    assert segs[8:] == [2.5, 8.5, 14.5, 20.5]  # twelfths 1, 4, 7, 10
    # a quarter's third twelfth follows from the others: budget 12 pins every twelfth of the clip
    assert 3 * segs[0] - segs[4] - segs[8] == frames[0, 4:6].mean().item()


def test_temporal_segments_ignore_padding_and_short_clips():
    frames = torch.randn(2, 30, 8)
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[0, :30], mask[1, :5] = True, True
    segs = temporal_segments(frames, mask)
    assert segs.shape == (2, 12, 8) and torch.isfinite(segs).all()
    assert torch.allclose(segs[1], temporal_segments(frames[1:2, :5])[0])
    one = temporal_segments(frames[:1, :1])  # a one-frame clip: every segment is that frame
    assert torch.allclose(one[0], frames[0, :1].expand(12, 8))


def test_bad_inputs_name_the_problem():
    proj = AudioProjector(16, 32, 12)
    with pytest.raises(ValueError, match="expects 16, got 15"):
        proj(torch.randn(2, 15))
    with pytest.raises(ValueError, match=r"num_tokens must be in \[0, 12\]"):
        proj(torch.randn(2, 16), num_tokens=13)
    with pytest.raises(ValueError, match="shape"):
        proj(torch.randn(16))
    with pytest.raises(ValueError, match="7 segment summaries per clip cannot feed 12"):
        proj(torch.randn(2, 7, 16))


def test_projector_is_per_segment_not_per_budget_output():
    """The output layer maps hidden -> D_llm once, shared by every token (not hidden -> K * D_llm)."""
    proj = AudioProjector(16, 32, 12, hidden_dim=64)
    assert proj.mlp[2].weight.shape == (32, 64)
    assert proj.position.shape == (12, 64)
