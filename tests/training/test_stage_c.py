import json

import numpy as np
import pytest
import torch
from conftest import make_bandit_table

from safe.config import StageBConfig, StageCConfig
from safe.models.policy import AudioPolicyNetwork
from safe.rl.reward import evaluate_actions
from safe.training.stage_b import StageBTrainer, evaluate_policy, reward_config_from
from safe.models.budget_gate import BudgetGate, gate_actions_on, load_gate, save_gate
from safe.training.stage_c import distill_gate, skip_rate_interval, threshold_for_skip_band


@pytest.fixture(scope="module")
def policy_and_tables():
    train, val, test = make_bandit_table(400, 0), make_bandit_table(200, 1), make_bandit_table(300, 2)
    torch.manual_seed(0)
    policy = AudioPolicyNetwork(train.state_dim, hidden_dim=32)
    StageBTrainer(policy, StageBConfig(steps=150, seed=0), progress=False).train(train, val)
    return policy, train, test


@pytest.mark.parametrize("hidden_dim, soft", [(16, False), (0, False), (16, True)])
def test_gate_agrees_with_policy(policy_and_tables, hidden_dim, soft):
    policy, train, test = policy_and_tables
    cfg = StageCConfig(epochs=100, lr=1e-2, hidden_dim=hidden_dim, seed=0)
    gate, report = distill_gate(policy, train.states, cfg, action_mask=train.action_mask(), soft_targets=soft)
    assert report["agreement_train"] >= 0.95 and report["agreement_heldout"] >= 0.95
    assert report["n_train"] + report["n_heldout"] == len(train)
    # on rows it never saw, the gate decides like the policy and earns the same reward
    mask = test.action_mask()
    gate_idx = gate_actions_on(gate, test.states, mask)
    pol_idx = policy.get_action_indices(test.states, deterministic=True, action_mask=mask).numpy()
    assert (gate_idx == pol_idx).mean() >= 0.95
    rc = reward_config_from(StageBConfig())
    policy_reward = evaluate_policy(policy, test, rc)["mean_reward"]
    assert evaluate_actions(test, gate_idx, rc)["mean_reward"] >= policy_reward - 0.05


def test_gate_value_is_probability_of_using_audio(policy_and_tables):
    policy, train, test = policy_and_tables
    gate, _ = distill_gate(policy, train.states, StageCConfig(epochs=100, hidden_dim=16), train.action_mask())
    p = gate.audio_probability(test.states)
    assert p.shape == (len(test),) and torch.all((p >= 0) & (p <= 1))
    budgets = gate.predict_budget(test.states)
    assert torch.all(budgets[p < 0.5] == 0)  # P(skip) > 0.5 makes skip the argmax
    masked = gate.audio_probability(test.states, action_mask=test.action_mask())
    assert torch.all(masked[~test.has_audio] == 0.0)
    assert masked[test.needs_audio].mean() > 0.9 and masked[~test.needs_audio].mean() < 0.1


def test_the_decision_is_a_threshold_on_the_printed_probability(policy_and_tables, tmp_path):
    """Audio is consulted exactly where P(audio) reaches the threshold, with the most probable non-zero budget; a
    higher threshold never consults audio more often; the threshold travels with the saved gate."""
    policy, train, test = policy_and_tables
    gate, _ = distill_gate(policy, train.states, StageCConfig(epochs=100, hidden_dim=16, audio_threshold=0.3),
                           train.action_mask())
    assert gate.audio_threshold == 0.3
    p = gate.audio_probability(test.states)
    probs = gate.action_probs(test.states)
    skips = []
    for threshold in (0.0, 0.3, 0.5, 0.8, 1.0):
        budgets = gate.predict_budget(test.states, audio_threshold=threshold)
        assert torch.equal(budgets > 0, (p >= threshold) & (p > 0))
        best = gate.budgets[probs[:, 1:].argmax(dim=-1) + 1]
        assert torch.equal(budgets[budgets > 0], best[budgets > 0])
        skips.append(float((budgets == 0).float().mean()))
    assert skips == sorted(skips) and skips[0] < skips[-1]
    assert torch.equal(gate.predict_budget(test.states), gate.predict_budget(test.states, audio_threshold=0.3))
    loaded = load_gate(save_gate(gate, tmp_path / "gate"))
    assert loaded.audio_threshold == 0.3
    config_file = next((tmp_path / "gate").glob("*.json"))
    config = json.loads(config_file.read_text())
    del config["audio_threshold"]  # a gate saved before the threshold existed
    config_file.write_text(json.dumps(config))
    assert load_gate(tmp_path / "gate").audio_threshold == 0.5


def test_logger_receives_distillation_metrics(policy_and_tables):
    policy, train, _ = policy_and_tables

    class Recorder:
        calls = []

        def log_metrics(self, metrics, step):
            self.calls.append((step, metrics))

    distill_gate(policy, train.states, StageCConfig(epochs=20, hidden_dim=4), logger=Recorder(), log_every=10)
    assert [s for s, _ in Recorder.calls] == [10, 20]
    assert {"distill_loss", "agreement_train"} <= set(Recorder.calls[0][1])


def test_save_load_gate_round_trip(tmp_path, policy_and_tables):
    policy, train, test = policy_and_tables
    gate, _ = distill_gate(policy, train.states, StageCConfig(epochs=10, hidden_dim=8))
    loaded = load_gate(save_gate(gate, tmp_path / "gate"))
    assert torch.equal(gate(test.states), loaded(test.states))
    assert torch.equal(gate.predict_budget(test.states), loaded.predict_budget(test.states))
    with pytest.raises(ValueError, match="expected kind 'deployment_gate'"):
        from safe.models.policy import save_policy
        load_gate(save_policy(policy, tmp_path / "policy"))


def test_gate_input_errors():
    with pytest.raises(ValueError, match="hidden_dim must be >= 0"):
        BudgetGate(4, hidden_dim=-1)
    gate = BudgetGate(4, hidden_dim=0)
    assert isinstance(gate.net, torch.nn.Linear)
    with pytest.raises(ValueError, match="expected 4, got 5"):
        gate.predict_budget(np.zeros((2, 5), dtype=np.float32))


def test_row_weights_decide_which_rows_the_gate_imitates(policy_and_tables):
    """Weight 0 on every row where the policy skips audio: the gate never learns to skip (on rows with audio)."""
    policy, train, _ = policy_and_tables
    mask = train.action_mask()
    skips = policy.get_action_indices(train.states, deterministic=True, action_mask=mask).numpy() == 0
    cfg = StageCConfig(epochs=100, lr=1e-2, hidden_dim=16, seed=0)
    _, plain = distill_gate(policy, train.states, cfg, action_mask=mask)
    _, skewed = distill_gate(policy, train.states, cfg, action_mask=mask, row_weights=(~skips).astype(float))
    assert plain["skip_rate_gate"] == pytest.approx(plain["skip_rate_policy"], abs=0.05)
    no_audio = float((~train.has_audio).mean())  # these rows can only skip
    assert skewed["skip_rate_gate"] < no_audio + 0.05 < plain["skip_rate_gate"]
    with pytest.raises(ValueError, match="row_weights"):
        distill_gate(policy, train.states, cfg, action_mask=mask, row_weights=np.ones(3))


@pytest.fixture(scope="module")
def gate_on_test(policy_and_tables):
    """A distilled gate, the test table, its action mask, its has_audio rows and the gate's P(audio) on them."""
    policy, train, test = policy_and_tables
    gate, _ = distill_gate(policy, train.states, StageCConfig(epochs=100, seed=0), action_mask=train.action_mask())
    mask, has = test.action_mask(), test.has_audio
    return gate, test, mask, has, gate.audio_probability(test.states, mask).numpy()[has]


def test_skip_band_moves_the_threshold_to_the_nearest_one_inside_and_only_when_outside(gate_on_test):
    gate, test, mask, has, p = gate_on_test
    skip = lambda t: float(((p < t) | (p <= 0)).mean())  # noqa: E731
    own = skip(gate.audio_threshold)
    kept = threshold_for_skip_band(gate, test.states, mask, has, max(own - 0.05, 0.0), min(own + 0.05, 1.0),
                                   confidence=0)
    assert kept["threshold"] == gate.audio_threshold and kept["skip_rate_after"] == pytest.approx(own)
    for low, high in ((min(own + 0.15, 0.95), 1.0), (0.0, max(own - 0.15, 0.05))):
        band = threshold_for_skip_band(gate, test.states, mask, has, low, high, confidence=0)
        assert band["skip_rate_before"] == pytest.approx(own) and band["n"] == has.sum()
        assert low - 1e-6 <= band["skip_rate_after"] <= high + 1e-6
        assert band["skip_rate_after"] == pytest.approx(skip(band["threshold"]))
        # nearest: no observed probability strictly between the gate's own threshold and the chosen one is inside
        between = [t for t in p if min(gate.audio_threshold, band["threshold"]) < t < max(gate.audio_threshold,
                                                                                             band["threshold"])]
        assert not any(low <= skip(t) <= high for t in between)
    with pytest.raises(ValueError, match="skip-rate band"):
        threshold_for_skip_band(gate, test.states, mask, has, 0.7, 0.3)
    with pytest.raises(ValueError, match="confidence"):
        threshold_for_skip_band(gate, test.states, mask, has, 0.3, 0.7, confidence=1.0)


def test_skip_band_with_a_confidence_moves_a_point_inside_the_band_until_its_interval_fits(gate_on_test):
    gate, test, mask, has, p = gate_on_test
    n = len(p)
    skipped = lambda t: int(((p < t) | (p <= 0)).sum())  # noqa: E731
    own = skipped(gate.audio_threshold) / n
    # a band the point estimate sits inside, 0.02 from its lower edge: its 95% interval (half-width ~0.06 on
    # these ~n rows) does not fit, so the threshold moves up until it does
    low, high = max(own - 0.02, 0.0), min(own + 0.3, 1.0)
    plain = threshold_for_skip_band(gate, test.states, mask, has, low, high, confidence=0)
    assert plain["threshold"] == gate.audio_threshold
    band = threshold_for_skip_band(gate, test.states, mask, has, low, high, confidence=0.95)
    assert band["skip_rate_before"] == pytest.approx(own)
    assert band["threshold"] > gate.audio_threshold and band["skip_rate_after"] > own
    assert low <= band["skip_rate_low"] <= band["skip_rate_after"] <= band["skip_rate_high"] <= high
    assert (band["skip_rate_low"], band["skip_rate_high"]) == pytest.approx(
        skip_rate_interval(skipped(band["threshold"]), n, 0.95))
    # nearest: no observed probability strictly between the two thresholds has an interval that fits
    fits = lambda lo_hi: low <= lo_hi[0] and lo_hi[1] <= high  # noqa: E731
    between = [t for t in p if gate.audio_threshold < t < band["threshold"]]
    assert not any(fits(skip_rate_interval(skipped(t), n, 0.95)) for t in between)


def test_skip_rate_interval_is_the_exact_binomial_one_and_tightens_with_n():
    lo, hi = skip_rate_interval(60, 132, 0.95)
    assert lo < 60 / 132 < hi and lo == pytest.approx(0.368, abs=0.002) and hi == pytest.approx(0.542, abs=0.002)
    lo_big, hi_big = skip_rate_interval(600, 1320, 0.95)
    assert lo < lo_big < hi_big < hi
    assert skip_rate_interval(60, 132, 0) == (60 / 132, 60 / 132)
    assert all(np.isnan(skip_rate_interval(0, 0, 0.95)))
