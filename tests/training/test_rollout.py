"""The outcome table's rollout: every row at every budget, generating only the rows whose answer can differ."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from safe.data.datasets import LlavaCollator, ManifestDataset
from safe.models.safe_model import SAFEArchitecture, SAFEModel
from safe.training.rollout import rollout


def test_rollout_generates_rows_with_a_clip_and_gives_the_full_batch_answers(trained_base, bench):
    manifest, store = bench
    torch.manual_seed(0)
    model = SAFEModel(trained_base, SAFEArchitecture(audio_embed_dim=16, projector_hidden=32))
    with torch.no_grad():  # an adapter that answers differently whenever it hears a clip
        for block in model.fusion.values():
            block.o_proj.lora_B["default"].weight.normal_(std=50.0)
            block.gate_logit.fill_(10.0)
    loader = DataLoader(ManifestDataset(manifest, "val", features=store), batch_size=16,
                        collate_fn=LlavaCollator(trained_base, 16, with_answers=False))
    batches = list(loader)
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
