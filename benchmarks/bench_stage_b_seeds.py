"""How robust are the test criteria to Stage B's seed? Retrain the bandit with several seeds on a finished run.

Usage, in a project where `dvc repro` has run (or `--run DIR` for another checkout):

    python benchmarks/bench_stage_b_seeds.py --seeds 0 1 2 3

For each seed it trains Stage B as the stage does (same fit and select tables, sampling weights and config;
the policy's initial weights and the bandit's sampling from that seed),
takes the policy's argmax budget for every test example, reads the answer at that budget from the evaluation's
prediction table (`data/eval/predictions.jsonl` holds each test example's answer at every budget), and scores the
result with the evaluation's own metric and criteria code. Test states are recomputed with the frozen base (they are
not stored). It measures the policy itself, not the Stage C gate distilled from it (the gate agrees with it on
most rows). Prints the measured metrics per seed and how many seeds pass all four criteria.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (repository on sys.path, offline hub)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from safe.config import load_config  # noqa: E402
from safe.data.datasets import LlavaCollator, ManifestDataset  # noqa: E402
from safe.data.features import FeatureStore  # noqa: E402
from safe.data.manifest import read_manifest  # noqa: E402
from safe.eval.criteria import Thresholds, all_passed, evaluate_criteria  # noqa: E402
from safe.eval.metrics import compute_metrics  # noqa: E402
from safe.models.base_vl import BaseVLModel  # noqa: E402
from safe.models.policy import AudioPolicyNetwork  # noqa: E402
from safe.rl.reward import OutcomeTable  # noqa: E402
from safe.training.rollout import batch_states  # noqa: E402
from safe.training.stage_b import StageBTrainer, mix_weights  # noqa: E402

SHOWN = ("retention_drop", "audio_gain", "skip_rate", "irrelevant_flip_rate")


@torch.no_grad()
def test_states(run: Path, ids: list[str]) -> np.ndarray:
    """Policy states (N, S) of the test examples `ids`, in that order, from the run's frozen base."""
    manifest, store = read_manifest(run / "data/prepared/manifest.jsonl"), FeatureStore.load(run / "data/features")
    base_dir = run / "data/models/base_vl"
    if not base_dir.is_dir():
        raise SystemExit(f"{base_dir} not found: this benchmark needs an offline profile's trained base (tiny, demo)")
    base = BaseVLModel.from_pretrained(base_dir)
    loader = DataLoader(ManifestDataset(manifest, "test", features=store), batch_size=64,
                        collate_fn=LlavaCollator(base, store.embed_dim, False))
    rows: dict[str, np.ndarray] = {}
    for batch in loader:
        _, first_logits = base.generate_answers(batch.vl, max_new_tokens=1, return_first_logits=True)
        states = batch_states(base, batch, first_logits).numpy()
        rows.update({r.id: s for r, s in zip(batch.records, states)})
    return np.stack([rows[i] for i in ids])


def policy_predictions(df: pd.DataFrame, budgets: np.ndarray) -> pd.DataFrame:
    """The prediction table as if `budgets` (N,) had been deployed: pred_safe = the answer at that budget."""
    out = df.copy()
    out["budget"] = budgets
    out["pred_safe"] = [row[f"pred_b{b}"] for (_, row), b in zip(df.iterrows(), budgets)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("."), help="project folder where dvc repro has run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    run = args.run.resolve()
    cfg = load_config(run / "params.yaml")
    fit = OutcomeTable.load(run / "data/models/stage_b/outcomes_train.npz")
    select = OutcomeTable.load(run / "data/models/stage_b/outcomes_val.npz")
    df = pd.read_json(run / "data/eval/predictions.jsonl", lines=True)
    latency = {k: v for k, v in json.loads((run / "data/eval/metrics.json").read_text()).items()
               if k.startswith("latency_ms_")}
    states = test_states(run, df["id"].tolist())
    mask = OutcomeTable(states=states, scores=np.zeros((len(df), len(fit.token_budgets))),
                        changed=np.zeros((len(df), len(fit.token_budgets)), dtype=bool),
                        needs_audio=df["needs_audio"].to_numpy(bool), has_audio=df["has_audio"].to_numpy(bool),
                        token_budgets=fit.token_budgets).action_mask()
    thresholds = Thresholds.from_config(cfg.promote)
    print(f"stage_b seeds on {run} ({cfg.profile} profile, {len(df)} test examples); policy argmax, not the gate")
    print(f"  {'seed':>4}  " + "  ".join(f"{k:>20}" for k in SHOWN) + "  all pass")
    passed = 0
    for seed in args.seeds:
        config = dataclasses.replace(cfg.stage_b, seed=seed)
        torch.manual_seed(seed)
        policy = AudioPolicyNetwork(fit.state_dim, fit.token_budgets, config.hidden_dim)
        StageBTrainer(policy, config, progress=False).train(fit, select, mix_weights(fit, select))
        budgets = policy.get_actions(states, deterministic=True, action_mask=mask).numpy()
        metrics = compute_metrics(policy_predictions(df, budgets), latency)
        ok = all_passed(evaluate_criteria(metrics, thresholds))
        passed += ok
        print(f"  {seed:>4}  " + "  ".join(f"{metrics[k]:>20.4f}" for k in SHOWN) + f"  {'yes' if ok else 'no'}")
    print(f"  seeds passing all four criteria: {passed}/{len(args.seeds)}")


if __name__ == "__main__":
    main()
