import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from clock_model import ClockModel  # tests/clock_model.py
from conftest import BUDGETS, make_bandit_table

from safe.config import StageBConfig
from safe.models.policy import AudioPolicyNetwork
from safe.rl.reward import OutcomeTable
from safe.training.stage_b import (
    StageBTrainer, bandit_tables, bandit_train_records, evaluate_policy, fixed_policy_rewards, reward_config_from,
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
    # Stage B rolls out only the training rows bandit_tables keeps: the same fit and select tables
    kept = [r for r, needs in zip(train.ids.tolist(), train.needs_audio) if needs]
    records = [SimpleNamespace(id=i, needs_audio=bool(n)) for i, n in zip(train.ids.tolist(), train.needs_audio)]
    assert [r.id for r in bandit_train_records(records)] == kept
    short_fit, short_select = bandit_tables(train.subset(train.needs_audio), val)
    assert np.array_equal(short_fit.ids, fit.ids) and np.array_equal(short_fit.scores, fit.scores)
    assert np.array_equal(short_select.ids, select.ids)


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


# -- measured latency cost per budget ---------------------------------------------------------------------------------

from safe.training import stage_b as stage_b_module  # noqa: E402
from safe.training.stage_b import (  # noqa: E402
    COST_STEP, BudgetTimes, TimingExample, budget_costs_from_times, measure_budget_costs, normalise_costs,
    time_budgets,
)


def test_normalise_costs_rounds_and_falls_back():
    # extra time 0, 20, 22, 25 -> 0, 0.8, 0.88, 1 -> rounded to 0.05
    assert normalise_costs([0.0, 20.0, 22.0, 25.0], BUDGETS) == (0.0, 0.8, 0.9, 1.0)
    assert normalise_costs([0.0, 19.6, 22.4, 25.2], BUDGETS) == (0.0, 0.8, 0.9, 1.0)  # noise of a few percent
    assert normalise_costs([0.0, -5.0, -2.0, -1.0], BUDGETS) == (0.0, 1 / 3, 2 / 3, 1.0)  # nothing measurable
    assert normalise_costs([0.0, -1.0, 30.0, 20.0], BUDGETS) == (0.0, 0.0, 1.0, 0.65)  # clipped at 0, max = slowest
    assert COST_STEP == 0.05
    with pytest.raises(ValueError, match="one finite time per budget"):
        normalise_costs([1.0, 2.0], BUDGETS)


def _times(rng, n=16, encoder=60.0, slope=0.0, load=1.0):
    """Timings of n examples on a machine whose load multiplies each call by a random factor in [1, 1 + 4 load]."""
    noise = lambda *shape: 1 + 4 * load * rng.random(shape)  # noqa: E731
    generate = (8.0 + slope * np.array(BUDGETS[1:]))[None, :] * noise(n, 3)
    return BudgetTimes(BUDGETS, 30.0 * noise(n), encoder * noise(n), generate)


def test_costs_are_a_stable_step_when_audio_tokens_add_no_time():
    """On a shared machine single timings vary 2-5x; the costs must not (the same seed must give the same policy)."""
    costs = {budget_costs_from_times(_times(np.random.default_rng(seed)))[0] for seed in range(200)}
    assert costs == {(0.0, 1.0, 1.0, 1.0)}
    costs, fit = budget_costs_from_times(_times(np.random.default_rng(0), load=0.0, slope=0.0))
    assert costs == (0.0, 1.0, 1.0, 1.0) and fit["generate_ms_per_token"] == 0.0 and fit["encoder_ms"] == 60.0


def test_costs_grow_with_the_budget_when_tokens_cost_time():
    # no encoder, generate 8 + 2 ms per token: 16, 24, 32 -> 0.5, 0.75, 1
    costs, fit = budget_costs_from_times(_times(np.random.default_rng(0), encoder=0.0, slope=2.0, load=0.0))
    assert costs == (0.0, 0.5, 0.75, 1.0) and fit["generate_ms_per_token"] == pytest.approx(2.0)
    noisy = budget_costs_from_times(_times(np.random.default_rng(1), n=32, encoder=0.0, slope=2.0, load=0.05))[0]
    assert noisy[1] < noisy[2] < noisy[3] == 1.0


def _examples(n=3):
    return [TimingExample(f"q{i}", None, np.zeros(160, dtype=np.float32), torch.zeros(8)) for i in range(n)]


def test_measure_budget_costs_times_the_audio_path_per_budget(monkeypatch):
    model = ClockModel(cached_features_only=True)
    monkeypatch.setattr(stage_b_module.time, "perf_counter", model.clock)
    costs = measure_budget_costs(model, _examples(), use_waveforms=True)
    # t_0 = 3 ms; t_k = 3 + 20 + 3 + 0.25 k -> 27, 28, 29 -> (24, 25, 26) / 26 (0.25 ms per token is exact here)
    assert costs.ms == pytest.approx((3.0, 27.0, 28.0, 29.0))
    assert costs.costs == (0.0, 0.9, 0.95, 1.0) and costs.source == "waveforms" and costs.n_examples == 3
    assert model.calls.count(("encoder", 1)) == 4  # once per example (and the warm-up), not once per budget
    out = costs.to_json()
    assert out["budget_costs"] == {"0": 0.0, "4": 0.9, "8": 0.95, "12": 1.0}
    assert out["budget_costs_ms"]["12"] == pytest.approx(29.0) and out["budget_costs_source"] == "waveforms"
    # without waveforms: the fused generate on cached features, and the record says so
    model = ClockModel(cached_features_only=True)
    monkeypatch.setattr(stage_b_module.time, "perf_counter", model.clock)
    cached = measure_budget_costs(model, _examples(), use_waveforms=False)
    assert cached.source == "cached_features" and cached.ms == pytest.approx((3.0, 7.0, 8.0, 9.0))
    assert ("encoder", 1) not in model.calls


def test_time_budgets_needs_the_inputs_it_times():
    model = ClockModel(cached_features_only=True)
    times = time_budgets(model, _examples(2), use_waveforms=False, warmup=0)
    assert times.base.shape == (2,) and times.generate.shape == (2, 3) and not times.encoder.any()
    with pytest.raises(ValueError, match="waveform"):
        time_budgets(model, [TimingExample("q", None, None, torch.zeros(8))], use_waveforms=True)
    with pytest.raises(ValueError, match="no examples"):
        time_budgets(model, [], use_waveforms=False)


def test_trainer_uses_the_measured_costs():
    train, val = make_bandit_table(200, 0), make_bandit_table(100, 1)
    cfg = StageBConfig(steps=20, batch_size=32, seed=0)
    step_costs = (0.0, 0.9, 0.95, 1.0)
    rc = reward_config_from(cfg, step_costs)
    assert rc.latency_cost == step_costs and reward_config_from(cfg).latency_cost is None
    torch.manual_seed(0)
    policy = AudioPolicyNetwork(train.state_dim, hidden_dim=16)
    trainer = StageBTrainer(policy, cfg, progress=False, reward_cfg=rc)
    history = trainer.train(train, val)
    assert trainer.reward_cfg is rc
    # the logged mean latency cost is a mix of the measured costs, never the old budget / 12 (1/3 or 2/3 alone)
    assert all(0.0 <= h["latency_cost"] <= 1.0 for h in history)
    fixed = fixed_policy_rewards(val, rc)["always_max"]
    assert fixed["latency_cost"] == pytest.approx(float(val.has_audio.mean()))  # max budget costs 1 where audio


def test_stage_b_config_latency_settings():
    from safe.config import ConfigError, build_config

    cfg = build_config({"profile": "tiny"}).stage_b
    assert (cfg.latency_timing, cfg.latency_examples, cfg.latency_cost) == ("waveforms", 16, None)
    cfg = build_config({"profile": "tiny", "stage_b": {"latency_cost": [0, 0.9, 0.95, 1]}}).stage_b
    assert cfg.latency_cost == (0.0, 0.9, 0.95, 1.0)
    for bad, where in (({"latency_cost": [0, -1]}, "stage_b.latency_cost"),
                       ({"latency_timing": "guess"}, "stage_b.latency_timing"),
                       ({"latency_examples": 0}, "stage_b.latency_examples")):
        with pytest.raises(ConfigError, match=where):
            build_config({"profile": "tiny", "stage_b": bad})
