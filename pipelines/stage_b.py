"""stage_b: tabulate Stage A's outcomes at every budget, then learn the budget policy as a contextual bandit.

The bandit fits on rows whose images the frozen base never trained on and picks its checkpoint on held-out
validation rows (`safe.training.stage_b.bandit_tables` says why); those two tables are what stage_c distils from.

Before training, the reward's latency cost per budget is measured on this machine (stage_b.latency_timing,
`safe.training.stage_b.measure_budget_costs`) on a few validation examples; stage_b.json records the milliseconds, the
normalised costs the reward used and how they were obtained (budget_costs_ms, budget_costs, budget_costs_source)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipelines.common import (
    CACHE, FEATURES, MANIFEST, METRICS, PLOTS, STAGE_A, STAGE_B, config, fail, run_with_error_boundary, tracked_stage,
)
from safe.data.datasets import LlavaCollator, ManifestDataset
from safe.data.features import FeatureStore
from safe.data.manifest import read_manifest
from safe.data.media import MediaError, load_audio, load_image
from safe.distributed import inference_autocast, process_state, resolve_inference_precision
from safe.eval.plots import plot_stage_b_rewards
from safe.inference import load_safe_model
from safe.io import atomic_dir, write_json_atomic
from safe.models.policy import AudioPolicyNetwork, save_policy
from safe.training.rollout import rollout
from safe.training.stage_b import (
    BudgetCosts, StageBTrainer, TimingExample, bandit_tables, bandit_train_records, evaluate_policy,
    fixed_policy_rewards, measure_budget_costs, mix_weights, reward_config_from,
)


def budget_costs(cfg, model, manifest, store: FeatureStore) -> BudgetCosts:
    """The reward's latency cost per budget: stage_b.latency_cost if set, else timed on validation examples."""
    s, budgets = cfg.stage_b, tuple(cfg.model.token_budgets)
    if s.latency_cost is not None:
        if len(s.latency_cost) != len(budgets):
            fail(f"stage_b.latency_cost has {len(s.latency_cost)} entries but model.token_budgets has "
                 f"{len(budgets)} ({list(budgets)}): give one cost per budget")
        return BudgetCosts(budgets, s.latency_cost, "params")
    if s.latency_timing == "budgets":
        return BudgetCosts(budgets, tuple(b / max(budgets) for b in budgets), "budgets")
    candidates = [r for r in manifest.by_split("val") if r.audio and store.has(r.id)]
    if not candidates:
        return BudgetCosts(budgets, tuple(b / max(budgets) for b in budgets), "budgets",
                           note="no validation example with a clip to time: budget / max budget")
    picks = np.unique(np.linspace(0, len(candidates) - 1, min(s.latency_examples, len(candidates))).round().astype(int))
    records = [candidates[i] for i in picks]  # spread over the split, the same ones every run
    note, waves = "", None
    if s.latency_timing == "waveforms":
        if model.audio_encoder is None:
            note = "the model has no audio encoder: timed on cached features (encoder time not counted)"
        else:
            try:
                waves = [load_audio(manifest.resolve(r.audio), max_seconds=cfg.data.max_audio_seconds)
                         for r in records]
            except (MediaError, OSError) as err:
                note = f"clips not readable ({err}): timed on cached features (encoder time not counted)"
    examples = [TimingExample(r.question, load_image(manifest.resolve(r.image)) if r.image else None,
                              None if waves is None else waves[i], store.get(r.id)[0])
                for i, r in enumerate(records)]
    return measure_budget_costs(model, examples, cfg.evaluate.max_new_tokens, use_waveforms=waves is not None,
                                note=note)


def main() -> None:
    cfg = config()
    with tracked_stage("stage_b", cfg, "stage_b") as tracker:
        manifest, store = read_manifest(MANIFEST), FeatureStore.load(FEATURES)
        timed = cfg.stage_b.latency_cost is None and cfg.stage_b.latency_timing == "waveforms"
        model = load_safe_model(STAGE_A, with_encoder=timed, cache_dir=CACHE / "encoders", dtype=cfg.model.dtype,
                                device=process_state().device)
        costs = budget_costs(cfg, model, manifest, store)  # before the rollouts: timing on a quiet model
        print(f"stage_b: latency cost per budget {dict(zip(costs.token_budgets, costs.costs))} "
              f"({costs.source}{f', {costs.n_examples} examples' if costs.n_examples else ''})")
        reward_cfg = reward_config_from(cfg.stage_b, costs.costs)
        collate = LlavaCollator(model.base, store.embed_dim, with_answers=False)
        tables = {}
        precision = resolve_inference_precision(cfg.evaluate.mixed_precision)
        print(f"stage_b: rollouts with evaluate.mixed_precision {cfg.evaluate.mixed_precision!r} -> {precision}")
        with inference_autocast(precision):  # the model passes; timing above is as deployed
            for split in ("train", "val"):
                records = manifest.by_split(split)
                records = bandit_train_records(records) if split == "train" else records
                loader = DataLoader(ManifestDataset(manifest, features=store, records=records), batch_size=64,
                                    collate_fn=collate)
                tables[split] = rollout(model, loader, cfg.evaluate.max_new_tokens, desc=f"outcomes[{split}]").table()
        fit, select = bandit_tables(tables["train"], tables["val"])  # rows the frozen models never trained on
        torch.manual_seed(cfg.stage_b.seed)  # the policy's initial weights: the same every run (as in the seeds bench)
        policy = AudioPolicyNetwork(fit.state_dim, cfg.model.token_budgets, hidden_dim=cfg.stage_b.hidden_dim)
        # Sampled in the deployment mix of question kinds (the held-out rows'), not the fit table's audio-heavy one.
        history = StageBTrainer(policy, cfg.stage_b, logger=tracker, reward_cfg=reward_cfg).train(
            fit, select, mix_weights(fit, select))
        learned = evaluate_policy(policy, select, reward_cfg)  # held-out validation rows
        fixed = fixed_policy_rewards(select, reward_cfg)
        metrics = {"fit_rows": len(fit), "select_rows": len(select),
                   **{f"policy_{k}": v for k, v in learned.items()}}
        for name, result in fixed.items():
            metrics.update({f"{name}_{k}": v for k, v in result.items()})
        metrics["beats_fixed_policies"] = float(learned["mean_reward"] > max(r["mean_reward"] for r in fixed.values()))
        print(f"stage_b: val mean reward policy={learned['mean_reward']:.4f} "
              f"always_0={fixed['always_0']['mean_reward']:.4f} always_max={fixed['always_max']['mean_reward']:.4f} "
              f"skip_rate={learned['skip_rate']:.3f}")
        with atomic_dir(STAGE_B) as tmp:
            save_policy(policy, tmp / "policy")
            # Stage C distils the gate on the rows the policy was fitted on and checks it on the held-out ones.
            fit.save(tmp / "outcomes_train.npz")
            select.save(tmp / "outcomes_val.npz")
            # The costs the reward used, for later stages (no milliseconds: this folder must repeat bit for bit)
            write_json_atomic(tmp / "budget_costs.json", {k: v for k, v in costs.to_json().items()
                                                          if k not in ("budget_costs_ms", "budget_costs_fit")})
        cost_json = costs.to_json()
        tracker.log_metrics({**metrics, **{f"budget_cost_{b}": c for b, c in cost_json["budget_costs"].items()},
                             **{f"budget_cost_ms_{b}": m for b, m in (cost_json["budget_costs_ms"] or {}).items()}})
        tracker.log_params({"budget_costs_source": costs.source})
        write_json_atomic(METRICS / "stage_b.json", {**metrics, **cost_json})
        # DVC's plots skip a file whose rows differ in keys (val_* appear at checks only): every row gets every key
        keys = sorted({key for row in history for key in row})
        write_json_atomic(PLOTS / "stage_b_rewards.json", [{key: row.get(key) for key in keys} for row in history])
        tracker.log_artifact(str(plot_stage_b_rewards(history, PLOTS / "stage_b_rewards.png")))


if __name__ == "__main__":
    run_with_error_boundary(main)
