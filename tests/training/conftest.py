"""Shared training fixtures: a tiny Stage A benchmark with a trained tiny base, and a bandit outcome table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from safe.data.features import FeatureStore
from safe.data.manifest import read_manifest
from safe.rl.reward import OutcomeTable

BUDGETS = (0, 4, 8, 12)


def make_bandit_table(n: int = 400, seed: int = 0, state_dim: int = 8, flip_rate: float = 0.3,
                      no_audio_rate: float = 0.1) -> OutcomeTable:
    """Half VL-only rows, half audio rows; column 0 of the state says which (plus noise), column 1 has_audio.

    VL-only rows: audio never helps; at each budget > 0 it flips the answer (score -> 0, changed) with prob flip_rate.
    Some VL-only rows have no audio at all. Audio rows: score 0 at budget 0, 1 at every budget >= 4.
    """
    rng = np.random.default_rng(seed)
    needs = rng.random(n) < 0.5
    has = needs | (rng.random(n) >= no_audio_rate)
    states = rng.normal(size=(n, state_dim)).astype(np.float32)
    states[:, 0] = np.where(needs, 1.0, -1.0) + 0.3 * rng.normal(size=n)
    states[:, 1] = has
    a = len(BUDGETS)
    base_right = rng.random(n) < 0.8
    flips = (rng.random((n, a)) < flip_rate) & has[:, None]
    flips[:, 0] = False
    scores = np.where(base_right[:, None] & ~flips, 1.0, 0.0)
    changed = flips.copy()
    scores[needs, 0], scores[needs, 1:] = 0.0, 1.0
    changed[needs, 0], changed[needs, 1:] = False, True
    return OutcomeTable(states, scores.astype(np.float32), changed, needs, has, BUDGETS,
                        ids=np.array([f"ex{i}" for i in range(n)]))


WORDS = ["one", "two", "three", "four"]


@pytest.fixture(scope="session")
def bench(tmp_path_factory):
    """VL rows ask about the image colour; audio rows ask for a count that only the audio feature carries."""
    root = tmp_path_factory.mktemp("bench")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    rows, ids, feats = [], [], []
    for i in range(96):
        split = "train" if i < 64 else "val"
        colour = ["red", "blue"][i % 2]
        img = root / "images" / f"{i}.png"
        Image.new("RGB", (32, 32), (255, 0, 0) if colour == "red" else (0, 0, 255)).save(img)
        needs = i % 4 < 2
        count = int(rng.integers(4))
        rows.append({"id": f"ex{i}", "split": split, "source": "test", "family": "audio" if needs else "vl",
                     "question": "how many beeps do you hear?" if needs else "what color is the circle?",
                     "answer": WORDS[count] if needs else colour, "image": f"images/{i}.png",
                     "audio": f"audio/{i}.wav" if needs or i % 4 == 2 else None, "needs_audio": needs})
        if rows[-1]["audio"]:
            vec = rng.normal(size=16).astype(np.float32) * 0.1
            vec[count] += 3.0
            ids.append(f"ex{i}")
            feats.append(vec)
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = FeatureStore(ids, torch.from_numpy(np.stack(feats)), torch.ones(len(ids), 3), "test-features")
    return read_manifest(root / "manifest.jsonl"), store


@pytest.fixture(scope="session")
def trained_base(bench, tmp_path_factory):
    """The tiny LLaVA trained from scratch on the VL rows (base_vl stage code): it must answer the colours."""
    from safe.config import BaseVLConfig, build_config
    from safe.models.base_vl import BaseVLModel
    from safe.training.base_vl import train_base_vl

    manifest, _ = bench
    model_cfg = build_config({"profile": "tiny", "model": {"vision_hidden": 32, "text_hidden": 32,
                                                           "text_intermediate": 64}}).model
    out = tmp_path_factory.mktemp("base") / "base_vl"
    report = train_base_vl(manifest, model_cfg, BaseVLConfig(epochs=30, batch_size=16, lr=3e-3, target_val_acc=1.0),
                           32, out, progress=False)
    assert report.best_val_acc == 1.0, report.history
    # The colour is in the image only: blanked, the model cannot beat a constant answer (half the rows).
    assert report.blind_val_acc is not None and report.blind_val_acc <= 0.75, report.blind_val_acc
    return BaseVLModel.from_pretrained(out)
