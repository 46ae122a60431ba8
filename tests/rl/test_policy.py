import numpy as np
import pytest
import torch

from safe.models.policy import AudioPolicyNetwork, load_policy, save_policy


def test_spec_snippet_runs_and_returns_budget_values():
    policy = AudioPolicyNetwork(state_feature_dim=256, token_budgets=[0, 4, 8, 12])
    actions = policy.get_actions(torch.randn(2, 256))
    assert actions.dtype == torch.long and actions.shape == (2,)
    assert set(actions.tolist()) <= {0, 4, 8, 12}


def test_probabilities_sum_to_one_with_and_without_mask():
    torch.manual_seed(0)
    policy = AudioPolicyNetwork(6, [0, 2, 5], hidden_dim=16)
    nn_head = policy.net[-1]
    torch.nn.init.normal_(nn_head.weight)  # make the policy non-uniform
    states = torch.randn(5, 6)
    probs = policy.action_probs(states)
    assert probs.shape == (5, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=torch.bool)
    masked = policy.action_probs(states, action_mask=mask)
    torch.testing.assert_close(masked.sum(-1), torch.ones(5))
    assert torch.all(masked[~mask] == 0.0)  # exactly zero, not just small
    assert torch.all(masked[mask] > 0)
    for _ in range(5):  # sampling never picks a masked action
        idx = policy.get_action_indices(states, action_mask=mask)
        assert mask[torch.arange(5), idx].all()


def test_actions_are_budget_values_and_indices_map_to_them():
    policy = AudioPolicyNetwork(4, [0, 3, 7], hidden_dim=8)
    states = torch.randn(10, 4)
    idx = policy.get_action_indices(states, deterministic=True)
    budgets = policy.get_actions(states, deterministic=True)
    assert torch.equal(budgets, torch.tensor([0, 3, 7])[idx])
    only_skip = torch.zeros(10, 3, dtype=torch.bool)
    only_skip[:, 0] = True
    assert torch.equal(policy.get_actions(states, action_mask=only_skip), torch.zeros(10, dtype=torch.long))


def test_fresh_policy_is_uniform_and_sampling_is_seeded():
    policy = AudioPolicyNetwork(4, hidden_dim=8)
    states = torch.randn(64, 4)
    torch.testing.assert_close(policy.action_probs(states), torch.full((64, 4), 0.25))
    a = policy.get_actions(states, generator=torch.Generator().manual_seed(3))
    b = policy.get_actions(states, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and len(set(a.tolist())) > 1


def test_normalizer_standardises_training_states():
    policy = AudioPolicyNetwork(3, hidden_dim=8)
    states = np.random.default_rng(0).normal(loc=[5, -2, 0], scale=[10, 0.1, 1], size=(200, 3)).astype(np.float32)
    states[:, 2] = 4.0  # constant feature -> std 1, just centred
    policy.fit_normalizer(states)
    z = policy.normalizer(torch.from_numpy(states))
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(z[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
    assert torch.all(z[:, 2] == 0) and bool(policy.normalizer.fitted)


def test_bad_inputs_raise_clear_errors():
    policy = AudioPolicyNetwork(8, hidden_dim=4)
    with pytest.raises(ValueError, match="expected 8, got 7"):
        policy(torch.randn(2, 7))
    with pytest.raises(ValueError, match="2-D"):
        policy(torch.randn(8))
    with pytest.raises(ValueError, match="shape"):
        policy.action_probs(torch.randn(2, 8), action_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"no action in row\(s\) \[1\]"):
        policy.action_probs(torch.randn(2, 8), action_mask=torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]).bool())
    for budgets in ([4, 8], [0, 8, 4], [0, 4, 4], [0], [0, -1]):
        with pytest.raises(ValueError, match="token_budgets"):
            AudioPolicyNetwork(8, budgets)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(1)
    policy = AudioPolicyNetwork(5, [0, 4, 8], hidden_dim=12)
    torch.nn.init.normal_(policy.net[-1].weight)
    policy.fit_normalizer(torch.randn(50, 5) * 3 + 1)
    folder = save_policy(policy, tmp_path / "policy")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_policy(folder)
    states = torch.randn(20, 5)
    assert torch.equal(policy.eval()(states), loaded(states))
    assert loaded.token_budgets == (0, 4, 8) and loaded.hidden_dim == 12
    assert torch.equal(loaded.normalizer.mean, policy.normalizer.mean)


def test_load_policy_missing_folder_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_policy(tmp_path / "nope")


def test_policy_and_gate_decide_in_float32_under_a_bf16_autocast():
    """Stage B and evaluate run the models under `evaluate.mixed_precision: bf16`; the policy and the gate must not:
    the gate's audio threshold (0.988 on demo) needs more digits than bf16 keeps."""
    from safe.distributed import inference_autocast
    from safe.models.budget_gate import BudgetGate

    torch.manual_seed(0)
    gate = BudgetGate(6, [0, 4, 8, 12], hidden_dim=16, audio_threshold=0.5)
    torch.nn.init.normal_(gate.net[-1].weight)
    states = torch.randn(64, 6)
    expected = gate.audio_probability(states)
    with inference_autocast("bf16"):
        assert torch.is_autocast_enabled("cpu")
        got = gate.audio_probability(states)
        budgets = gate.predict_budget(states)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert torch.equal(budgets, gate.predict_budget(states))
    with inference_autocast("no"):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_inference_precision_is_bf16_only_where_the_cpu_has_native_bf16(monkeypatch, native):
    """`evaluate.mixed_precision: auto` autocasts to bf16 on a CPU with AVX512-BF16 or AMX and runs float32 on one
    that would emulate bf16 (slower than float32 there); `no` and `bf16` mean what they say on any CPU."""
    from safe.distributed import inference_autocast, resolve_inference_precision

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    cpu = torch.device("cpu")
    assert resolve_inference_precision("auto", cpu) == ("bf16" if native else "no")
    assert resolve_inference_precision("no", cpu) == "no" and resolve_inference_precision("bf16", cpu) == "bf16"
    with inference_autocast("auto"):
        assert torch.is_autocast_enabled("cpu") == native
        if native:
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16
