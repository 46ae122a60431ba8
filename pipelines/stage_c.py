"""stage_c: distil the Stage B policy into the lightweight deployment gate; assemble the deployable bundle."""

from __future__ import annotations

import json
import shutil

from pipelines.common import (
    METRICS, SAFE_BUNDLE, STAGE_A, STAGE_B, base_vl_source, config, run_with_error_boundary, tracked_stage,
)
from safe.inference import assemble_bundle
from safe.io import write_json_atomic
from safe.models.budget_gate import gate_actions_on, save_gate
from safe.models.policy import load_policy
from safe.rl.reward import OutcomeTable, evaluate_actions
from safe.training.stage_b import mix_weights, reward_config_from
from safe.training.stage_c import distill_gate, threshold_for_skip_band


def main() -> None:
    cfg = config()
    with tracked_stage("stage_c", cfg, "stage_c") as tracker:
        policy = load_policy(STAGE_B / "policy")
        train = OutcomeTable.load(STAGE_B / "outcomes_train.npz")
        val = OutcomeTable.load(STAGE_B / "outcomes_val.npz")
        gate, report = distill_gate(policy, train.states, cfg.stage_c, action_mask=train.action_mask(), logger=tracker,
                                    row_weights=mix_weights(train, val))  # the mix Stage B trained in
        band = threshold_for_skip_band(gate, val.states, val.action_mask(), val.has_audio, cfg.promote.skip_rate_min,
                                       cfg.promote.skip_rate_max, cfg.stage_c.skip_band_confidence)
        gate.audio_threshold = band["threshold"]
        report.update({"audio_threshold": band["threshold"], "val_skip_rate_with_audio": band["skip_rate_after"],
                       "val_skip_rate_with_audio_before": band["skip_rate_before"],
                       "val_skip_rate_with_audio_low": band["skip_rate_low"],
                       "val_skip_rate_with_audio_high": band["skip_rate_high"]})
        # Scored with the latency costs Stage B measured and trained with (budget_costs.json), not budget / max.
        costs = json.loads((STAGE_B / "budget_costs.json").read_text())["budget_costs"]
        reward_cfg = reward_config_from(cfg.stage_b, [costs[str(b)] for b in cfg.model.token_budgets])
        deployed = evaluate_actions(val, gate_actions_on(gate, val.states, val.action_mask()), reward_cfg)
        metrics = {**report, **{f"val_{k}": v for k, v in deployed.items()}}
        print(f"stage_c: gate/policy agreement train={report['agreement_train']:.3f} "
              f"heldout={report['agreement_heldout']:.3f}; audio threshold {band['threshold']:.3f}: val skip rate "
              f"over examples with a clip {band['skip_rate_before']:.3f} -> {band['skip_rate_after']:.3f} "
              f"({cfg.stage_c.skip_band_confidence:.0%} interval {band['skip_rate_low']:.3f}-"
              f"{band['skip_rate_high']:.3f}, n={band['n']:.0f})")
        gate_dir = STAGE_B.parent / ".gate.tmp"
        shutil.rmtree(gate_dir, ignore_errors=True)
        save_gate(gate, gate_dir)
        assemble_bundle(SAFE_BUNDLE, base_vl_source(cfg), STAGE_A, gate_dir)
        shutil.rmtree(gate_dir, ignore_errors=True)
        tracker.log_metrics(metrics)
        write_json_atomic(METRICS / "stage_c.json", metrics)


if __name__ == "__main__":
    run_with_error_boundary(main)
