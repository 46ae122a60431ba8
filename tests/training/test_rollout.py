"""The outcome table's rollout: every row at every budget, generating only the rows whose answer can differ."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from safe.data.datasets import LlavaCollator, ManifestDataset
from safe.eval.evaluation import RobustnessProbes
from safe.models.safe_model import SAFEArchitecture, SAFEModel
from safe.training.rollout import rollout


def wrecked_model(base) -> SAFEModel:
    """An adapter that answers differently whenever it hears a clip."""
    torch.manual_seed(0)
    model = SAFEModel(base, SAFEArchitecture(audio_embed_dim=16, projector_hidden=32))
    with torch.no_grad():
        for block in model.fusion.values():
            block.o_proj.lora_B["default"].weight.normal_(std=50.0)
            block.gate_logit.fill_(10.0)
    return model


def val_batches(base, manifest, store) -> list:
    return list(DataLoader(ManifestDataset(manifest, "val", features=store), batch_size=16,
                           collate_fn=LlavaCollator(base, 16, with_answers=False)))


def test_rollout_generates_rows_with_a_clip_and_gives_the_full_batch_answers(trained_base, bench):
    manifest, store = bench
    model = wrecked_model(trained_base)
    batches = val_batches(trained_base, manifest, store)
    assert any(b.has_audio.any() and not b.has_audio.all() for b in batches)  # mixed batches: rows are subset
    ro = rollout(model, batches, max_new_tokens=2, progress=False)
    i = 0
    changed = 0
    for batch in batches:
        for a, b in enumerate(model.token_budgets):
            full = model.generate_answers(batch.vl, batch.has_audio.long() * b, audio_features=batch.audio_features,
                                          max_new_tokens=2)  # the whole batch at once, rows without a clip at 0
            assert [ro.preds[i + j][a] for j in range(len(full))] == full, (b, i)
            changed += sum(p != ro.preds[i + j][0] for j, p in enumerate(full))
        i += len(batch.records)
    assert changed > 0  # the wrecked adapter does change answers: the comparison above can fail


def test_robustness_probes_from_the_rollout_prefix_answer_as_full_passes(trained_base, bench):
    manifest, store = bench
    model = wrecked_model(trained_base)
    batches = val_batches(trained_base, manifest, store)
    probes = RobustnessProbes(model, store, max_new_tokens=2, seed=3)
    rollout(model, batches, max_new_tokens=2, progress=False, on_batch=probes.add)
    rng, pool, K = np.random.default_rng(3), store.segments, max(model.token_budgets)
    compared = changed = 0
    for batch in batches:  # the probes' draws again, each answered by a full pass
        vl_rows = (~batch.needs_audio).nonzero().flatten()
        distractor = pool[torch.from_numpy(rng.integers(0, len(pool), len(batch.records)))]
        vl = model.base.batch_rows(batch.vl, vl_rows)
        full = model.generate_answers(vl, K, audio_features=distractor[vl_rows], max_new_tokens=2)
        base = model.generate_answers(vl, 0, max_new_tokens=2)
        got = [probes.answers[batch.records[i].id]["pred_distractor"] for i in vl_rows.tolist()]
        assert got == full
        compared += len(full)
        changed += sum(a != b for a, b in zip(full, base))
    assert compared > 0 and changed > 0  # answers the wrong clip changed: a wrong prefix would show
