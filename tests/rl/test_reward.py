import numpy as np
import pytest
import torch

from safe.rl.reward import OutcomeTable, OutcomeTableError, RewardConfig, evaluate_actions, reward_terms


def three_rows() -> OutcomeTable:
    """row 0: VL-only, audio flips the answer at 4 and 8; row 1: needs audio, helps from 4;
    row 2: VL-only without audio."""
    return OutcomeTable(
        states=np.zeros((3, 2), dtype=np.float32),
        scores=np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.5, 0.5, 0.5]], dtype=np.float32),
        changed=np.array([[False, True, True], [False, True, True], [False, False, False]]),
        needs_audio=np.array([False, True, False]),
        has_audio=np.array([True, True, False]),
        token_budgets=(0, 4, 8),
        ids=["a", "b", "c"],
    )


def test_reward_terms_by_hand():
    table = three_rows()
    cfg = RewardConfig(alpha=0.2, gamma=0.5)
    t = reward_terms(table, [1, 2, 0], cfg)
    torch.testing.assert_close(t["score"], torch.tensor([0.0, 1.0, 0.5]))
    torch.testing.assert_close(t["latency_cost"], torch.tensor([0.5, 1.0, 0.0]))
    torch.testing.assert_close(t["irrelevance"], torch.tensor([1.0, 0.0, 0.0]))  # row 1 needs audio: no penalty
    torch.testing.assert_close(t["reward"], torch.tensor([0 - 0.1 - 0.5, 1 - 0.2, 0.5]))
    torch.testing.assert_close(t["retention_gap"], torch.tensor([1.0, -1.0, 0.0]))
    sub = reward_terms(table, [0], cfg, rows=[1])  # a minibatch of one row
    torch.testing.assert_close(sub["reward"], torch.tensor([0.0]))


def test_custom_latency_costs_and_evaluate_actions():
    table = three_rows()
    cfg = RewardConfig(alpha=1.0, gamma=1.0, latency_cost=(0.0, 0.3, 0.4))
    torch.testing.assert_close(reward_terms(table, [0, 1, 0], cfg)["reward"], torch.tensor([1.0, 0.7, 0.5]))
    ev = evaluate_actions(table, np.array([1, 1, 0]), cfg)
    assert ev["skip_rate"] == pytest.approx(1 / 3)
    assert ev["mean_tokens"] == pytest.approx(8 / 3)
    assert ev["vl_drop"] == pytest.approx(0.5)  # rows 0 and 2: gaps 1 and 0
    assert ev["audio_gain"] == pytest.approx(1.0)
    assert ev["irrelevance"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="3 budgets"):
        RewardConfig(latency_cost=(0.0, 1.0)).latency_costs((0, 4, 8))


def test_action_mask_and_subset():
    table = three_rows()
    assert table.action_mask().tolist() == [[True] * 3, [True] * 3, [True, False, False]]
    sub = table.subset([2, 0])
    assert len(sub) == 2 and sub.ids.tolist() == ["c", "a"] and sub.scores[1, 0] == 1.0


def test_save_load_round_trip(tmp_path):
    table = three_rows()
    path = table.save(tmp_path / "out" / "table.npz")
    loaded = OutcomeTable.load(path)
    for name in ("states", "scores", "changed", "needs_audio", "has_audio", "ids"):
        assert np.array_equal(getattr(loaded, name), getattr(table, name))
    assert loaded.token_budgets == (0, 4, 8)
    assert [p.name for p in path.parent.iterdir()] == ["table.npz"]  # no temp files left behind


@pytest.mark.parametrize("change, message", [
    (dict(scores=np.full((3, 3), 1.5, dtype=np.float32)), r"scores must lie in \[0, 1\]"),
    (dict(scores=np.zeros((3, 2), dtype=np.float32)), r"scores must have shape \(3, 3\)"),
    (dict(changed=np.array([[True, False, False]] * 3)), r"changed\[:, 0\] must be False"),
    (dict(needs_audio=np.array([0, 1, 0])), "needs_audio must be boolean"),
    (dict(states=np.full((3, 2), np.nan)), "non-finite"),
    (dict(token_budgets=(4, 8, 12)), "start with 0"),
])
def test_validation_errors(change, message):
    t = three_rows()
    fields = dict(states=t.states, scores=t.scores, changed=t.changed, needs_audio=t.needs_audio,
                  has_audio=t.has_audio, token_budgets=t.token_budgets)
    fields.update(change)
    with pytest.raises(OutcomeTableError, match=message):
        OutcomeTable(**fields)


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, states=np.zeros((2, 2)))
    with pytest.raises(OutcomeTableError, match=r"bad.npz: missing array"):
        OutcomeTable.load(bad)
    with pytest.raises(OutcomeTableError, match="not found"):
        OutcomeTable.load(tmp_path / "missing.npz")


def test_reward_terms_rejects_out_of_range_actions():
    with pytest.raises(ValueError, match=r"action_idx must be in \[0, 2\]"):
        reward_terms(three_rows(), [0, 3, 0])


def test_measured_step_costs_charge_every_audio_budget_the_same():
    """Measured costs on a small model are a step (encoder + second generate, whatever the budget): choosing audio
    costs alpha at any budget, so between budgets > 0 only the score decides."""
    table = three_rows()
    step = RewardConfig(alpha=0.1, gamma=1.0, latency_cost=(0.0, 1.0, 1.0))
    linear = RewardConfig(alpha=0.1, gamma=1.0)  # budget / max budget
    r_step = reward_terms(table, [1, 1, 0], step)["reward"]
    torch.testing.assert_close(reward_terms(table, [2, 2, 0], step)["reward"], r_step)  # same scores, same cost
    torch.testing.assert_close(reward_terms(table, [1, 1, 0], step)["latency_cost"], torch.tensor([1.0, 1.0, 0.0]))
    # budget 4 is half price under budget / max, full price under the step
    torch.testing.assert_close(r_step, reward_terms(table, [1, 1, 0], linear)["reward"] - torch.tensor([0.05, 0.05, 0]))
