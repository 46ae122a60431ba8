"""The policy state: the question part, the base's confidence and the audio statistics, in that order."""

from __future__ import annotations

import pytest
import torch

from safe.rl.state_features import build_state, question_features, state_dim


def test_state_layout_and_size(tiny_base):
    batch = tiny_base.encode(["how many shapes are there?", "how many zzzz are there?"], [None, None])
    q = question_features(tiny_base, batch.input_ids, batch.attention_mask)
    assert q.shape == (2, tiny_base.hidden_size)
    logits = torch.zeros(2, 10)
    logits[0, 3] = 20.0  # row 0: a sure answer
    stats = torch.tensor([[0.5, 0.9, 2.0], [0.5, 0.9, 2.0]])
    state = build_state(q, logits, stats, torch.tensor([True, False]))
    assert state.shape == (2, state_dim(tiny_base.hidden_size))
    entropy, max_prob = state[:, -6], state[:, -5]
    assert entropy[0] < 0.01 < entropy[1] and max_prob[0] > 0.99
    assert torch.equal(state[0, -4:], torch.tensor([0.5, 0.9, 2.0, 1.0]))
    assert torch.equal(state[1, -4:], torch.zeros(4))  # no clip: its statistics are zeroed


def test_batch_size_mismatch_is_named(tiny_base):
    batch = tiny_base.encode(["how many shapes are there?"], [None])
    q = question_features(tiny_base, batch.input_ids, batch.attention_mask)
    with pytest.raises(ValueError, match="audio_stats has batch size 2"):
        build_state(q, torch.zeros(1, 10), torch.zeros(2, 3), torch.tensor([True]))
