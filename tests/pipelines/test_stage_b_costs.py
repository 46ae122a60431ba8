"""pipelines/stage_b.py: where the reward's latency costs come from (measured, params or budgets) and what
stage_b.json then says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines import stage_b
from safe.config import build_config
from safe.data.features import FeatureStore
from safe.data.manifest import read_manifest
from safe.training import stage_b as trainer_module

from clock_model import ClockModel  # tests/clock_model.py


@pytest.fixture(scope="module")
def val_split(tmp_path_factory):
    from safe.data import sounds, synth

    try:
        sounds.animal_files()
    except sounds.SoundsUnavailable as err:
        pytest.skip(str(err))
    manifest = read_manifest(synth.generate_benchmark(tmp_path_factory.mktemp("b"), {"val": 24}, seed=1,
                                                      progress=False))
    ids = [r.id for r in manifest if r.audio]
    store = FeatureStore(ids, torch.zeros(len(ids), 8), torch.zeros(len(ids), 3), "fake")
    return manifest, store


def _costs(monkeypatch, val_split, with_encoder=True, **stage_b_params):
    manifest, store = val_split
    cfg = build_config({"profile": "tiny", "stage_b": {"latency_examples": 4, **stage_b_params}})
    model = ClockModel(with_encoder)
    monkeypatch.setattr(trainer_module.time, "perf_counter", model.clock)
    return stage_b.budget_costs(cfg, model, manifest, store), model


def test_costs_are_timed_on_validation_clips(monkeypatch, val_split):
    costs, model = _costs(monkeypatch, val_split)
    assert costs.source == "waveforms" and costs.n_examples == 4 and not costs.note
    assert costs.costs == (0.0, 0.9, 0.95, 1.0) and costs.ms == pytest.approx((3.0, 27.0, 28.0, 29.0))
    assert ("encoder", 1) in model.calls
    out = costs.to_json()
    assert set(out) == {"budget_costs_ms", "budget_costs", "budget_costs_source", "budget_costs_examples",
                        "budget_costs_fit"}


def test_without_waveforms_the_cached_features_are_timed_and_stage_b_json_says_so(monkeypatch, val_split):
    costs, model = _costs(monkeypatch, val_split, with_encoder=False)
    assert costs.source == "cached_features" and "no audio encoder" in costs.note
    assert ("encoder", 1) not in model.calls
    assert costs.to_json()["budget_costs_note"] == costs.note
    costs, _ = _costs(monkeypatch, val_split, latency_timing="cached_features")
    assert costs.source == "cached_features" and costs.ms == pytest.approx((3.0, 7.0, 8.0, 9.0))


def test_unreadable_clips_fall_back_to_cached_features(monkeypatch, val_split):
    from safe.data.media import MediaError

    def broken(path, **_):
        raise MediaError(f"{path}: truncated")

    monkeypatch.setattr(stage_b, "load_audio", broken)
    costs, _ = _costs(monkeypatch, val_split)
    assert costs.source == "cached_features" and "truncated" in costs.note


def test_params_override_and_budget_costs_time_nothing(monkeypatch, val_split):
    costs, model = _costs(monkeypatch, val_split, latency_cost=[0, 0.5, 0.75, 1])
    assert (costs.source, costs.costs, costs.ms, model.calls) == ("params", (0.0, 0.5, 0.75, 1.0), None, [])
    assert costs.to_json()["budget_costs_ms"] is None
    costs, model = _costs(monkeypatch, val_split, latency_timing="budgets")
    assert costs.source == "budgets" and np.allclose(costs.costs, (0, 1 / 3, 2 / 3, 1)) and model.calls == []
    with pytest.raises(SystemExit):
        _costs(monkeypatch, val_split, latency_cost=[0, 1])  # one cost per budget
