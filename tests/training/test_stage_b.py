import dataclasses

import numpy as np
import pytest
import torch
from conftest import BUDGETS, make_bandit_table

from safe.config import StageBConfig
from safe.models.policy import AudioPolicyNetwork
from safe.rl.reward import OutcomeTable
from safe.training.stage_b import (
    StageBTrainer, bandit_tables, evaluate_policy, fixed_policy_rewards, reward_config_from,
)

LOGGED = {"reward", "score", "latency_cost", "irrelevance", "lagrange", "entropy", "policy_loss", "vl_drop"}


class RecordingLogger:
    """Satisfies the `log_metrics(metrics, step)` protocol of the tracking module."""

    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step):
        self.calls.append((step, dict(metrics)))


def train_policy(table, val, steps=150, seed=0, logger=None, **overrides):
    cfg = StageBConfig(steps=steps, batch_size=64, lr=3e-3, seed=seed, **overrides)
    torch.manual_seed(seed)
    policy = AudioPolicyNetwork(table.state_dim, hidden_dim=32)
    history = StageBTrainer(policy, cfg, logger=logger, progress=False).train(table, val)
    return policy, history, cfg


@pytest.fixture(scope="module")
def trained():
    train, val, test = make_bandit_table(400, 0), make_bandit_table(200, 1), make_bandit_table(200, 2)
    logger = RecordingLogger()
    policy, history, cfg = train_policy(train, val, logger=logger)
    return policy, history, cfg, logger, test


def test_learns_to_skip_vl_rows_and_use_cheapest_helpful_budget(trained):
    policy, _, _, _, test = trained
    idx = policy.get_action_indices(test.states, deterministic=True, action_mask=test.action_mask()).numpy()
    assert (idx[~test.needs_audio] == 0).mean() >= 0.95
    assert (idx[test.needs_audio] == 1).mean() >= 0.95  # budget 4: the cheapest one that helps
    assert np.all(idx[~test.has_audio] == 0)


def test_beats_both_fixed_policies_on_held_out_rows(trained):
    policy, _, cfg, _, test = trained
    rc = reward_config_from(cfg)
    learned = evaluate_policy(policy, test, rc)
    fixed = fixed_policy_rewards(test, rc)
    assert learned["mean_reward"] > fixed["always_0"]["mean_reward"] + 0.1
    assert learned["mean_reward"] > fixed["always_max"]["mean_reward"] + 0.1
    assert learned["vl_drop"] <= cfg.retention_tolerance and learned["irrelevance"] == 0.0
    assert 0.4 <= learned["skip_rate"] <= 0.7
    assert set(learned) >= {"mean_reward", "score", "skip_rate", "mean_tokens", "vl_drop", "irrelevance"}


def test_every_step_is_logged_with_every_reward_term(trained):
    _, history, cfg, logger, _ = trained
    assert [s for s, _ in logger.calls] == list(range(1, cfg.steps + 1))
    assert [h["step"] for h in history] == list(range(1, cfg.steps + 1))
    for (step, metrics), record in zip(logger.calls, history):
        assert LOGGED <= set(metrics)
        assert all(np.isfinite(v) for v in metrics.values())
        assert metrics["reward"] == record["reward"]
    assert any("val_mean_reward" in m for _, m in logger.calls)
    # the policy gets more certain as it learns
    assert np.mean([h["entropy"] for h in history[-10:]]) < np.mean([h["entropy"] for h in history[:10]])


def test_same_seed_same_history_and_weights():
    table, val = make_bandit_table(200, 0), make_bandit_table(100, 1)
    p1, h1, _ = train_policy(table, val, steps=30, seed=7)
    p2, h2, _ = train_policy(table, val, steps=30, seed=7)
    assert h1 == h2
    for (k, a), (_, b) in zip(p1.state_dict().items(), p2.state_dict().items()):
        assert torch.equal(a, b), k
    _, h3, _ = train_policy(table, val, steps=30, seed=8)
    assert h3 != h1


def test_lagrange_multiplier_rises_when_retention_is_violated():
    # Planted violation: a fresh (uniform) policy uses audio on 3/4 of the VL-only rows, where audio always costs
    # the base answer's score, so the batch VL drop is far above the 0.005 tolerance.
    table = make_bandit_table(300, 3, flip_rate=1.0, no_audio_rate=0.0)
    _, history, _ = train_policy(table, None, steps=20, alpha=0.0, gamma=0.0, entropy_coef=0.0, lagrange_lr=0.5)
    lam = np.array([h["lagrange"] for h in history])
    drops = np.array([h["vl_drop"] for h in history])
    assert lam[0] == 0.0 and drops[0] > 0.3
    assert np.all(np.diff(lam)[drops[:-1] > 0.005] > 0)  # rises on every step the constraint is broken
    assert lam[-1] > 1.0


def test_lagrange_multiplier_stays_zero_when_audio_never_hurts_vl_rows():
    table = make_bandit_table(300, 3, flip_rate=0.0)
    _, history, _ = train_policy(table, None, steps=20)
    assert all(h["lagrange"] == 0.0 for h in history)


def test_mismatched_tables_and_configs_raise():
    table = make_bandit_table(50, 0, state_dim=8)
    policy = AudioPolicyNetwork(6)
    with pytest.raises(ValueError, match="state dim 8, policy expects 6"):
        StageBTrainer(policy, StageBConfig(steps=1), progress=False).train(table)
    other = dataclasses.replace(table, token_budgets=(0, 2, 4, 6))
    with pytest.raises(ValueError, match="budgets"):
        StageBTrainer(AudioPolicyNetwork(8), StageBConfig(steps=1), progress=False).train(other)
    with pytest.raises(ValueError, match="lacks field"):
        StageBTrainer(AudioPolicyNetwork(8), object())
    assert isinstance(other, OutcomeTable)


def test_bandit_fits_only_rows_the_frozen_models_never_trained_on():
    train, val = make_bandit_table(200, seed=1), make_bandit_table(300, seed=2)
    val = OutcomeTable(val.states, val.scores, val.changed, val.needs_audio, val.has_audio, val.token_budgets,
                       ids=np.array([f"val{i}" for i in range(len(val))]))
    fit, select = bandit_tables(train, val)
    fit_ids, select_ids = set(fit.ids.tolist()), set(select.ids.tolist())
    train_needs = {i for i, needs in zip(train.ids.tolist(), train.needs_audio) if needs}
    assert fit_ids & set(train.ids.tolist()) == train_needs  # no VL-only training row: the base trained on those
    assert not fit_ids & select_ids and (fit_ids - train_needs) | select_ids == set(val.ids.tolist())
    assert 0.2 < len(select) / len(val) < 0.45  # about 1 in 3 validation rows held out
    again_fit, again_select = bandit_tables(train, val)
    assert np.array_equal(again_select.ids, select.ids) and np.array_equal(again_fit.states, fit.states)
    with pytest.raises(ValueError, match="ids"):
        bandit_tables(train, OutcomeTable(val.states, val.scores, val.changed, val.needs_audio, val.has_audio))


def test_concat_keeps_rows_in_order_and_rejects_other_budgets():
    a, b = make_bandit_table(10, seed=3), make_bandit_table(7, seed=4)
    both = OutcomeTable.concat([a, b])
    assert len(both) == 17 and np.array_equal(both.scores[10:], b.scores) and np.array_equal(both.ids[:10], a.ids)
    other = OutcomeTable(b.states, b.scores[:, :3], b.changed[:, :3], b.needs_audio, b.has_audio, (0, 4, 8))
    with pytest.raises(ValueError, match="same token budgets"):
        OutcomeTable.concat([a, other])


def test_mix_weights_match_the_reference_mix_of_question_kinds():
    from safe.training.stage_b import mix_weights

    fit = make_bandit_table(400, seed=0)
    audio_heavy = fit.subset(fit.needs_audio | (np.arange(len(fit)) % 5 == 0))  # most VL-only rows dropped
    w = mix_weights(audio_heavy, fit)
    assert w.shape == (len(audio_heavy),) and w.mean() == pytest.approx(1.0)

    def share(table, weights, mask):
        return float((weights * mask).sum() / weights.sum())

    for needs in (True, False):
        for has in (True, False):
            target = share(fit, np.ones(len(fit)), (fit.needs_audio == needs) & (fit.has_audio == has))
            got = share(audio_heavy, w, (audio_heavy.needs_audio == needs) & (audio_heavy.has_audio == has))
            assert got == pytest.approx(target)
    with pytest.raises(ValueError, match="no row"):
        mix_weights(fit.subset(fit.needs_audio), fit.subset(~fit.needs_audio))


def test_row_weights_steer_which_rows_the_bandit_samples():
    """Weight 0 on every VL-only row: the bandit never sees one, so its VL drop stays unconstrained (lambda 0);
    uniform sampling does see them."""
    table = make_bandit_table(400, seed=1)
    cfg = StageBConfig(steps=30, batch_size=32, seed=0)
    weights = table.needs_audio.astype(np.float64)
    history = StageBTrainer(AudioPolicyNetwork(table.state_dim, BUDGETS, 16), cfg).train(table, row_weights=weights)
    assert all(h["vl_drop"] == 0.0 and h["lagrange"] == 0.0 for h in history)
    uniform = StageBTrainer(AudioPolicyNetwork(table.state_dim, BUDGETS, 16), cfg).train(table)
    assert any(h["vl_drop"] > 0 for h in uniform)
    with pytest.raises(ValueError, match="row_weights"):
        StageBTrainer(AudioPolicyNetwork(table.state_dim, BUDGETS, 16), cfg).train(table, row_weights=weights[:10])
