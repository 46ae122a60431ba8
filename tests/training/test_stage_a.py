"""Stage A on a tiny in-memory benchmark: learning, the retention rollback, and checkpoint resume."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.data import DataLoader

from safe.config import StageAConfig
from safe.data.datasets import BalancedBatchSampler, LlavaCollator, ManifestDataset
from safe.models.safe_model import SAFEArchitecture, SAFEModel
from safe.training.stage_a import StageATrainer


def make_trainer(tiny_base, bench, steps, tmp_path=None, callbacks=None, gate_floor=0.0, **overrides):
    manifest, store = bench
    torch.manual_seed(0)
    model = SAFEModel(tiny_base, SAFEArchitecture(audio_embed_dim=16, projector_hidden=32, gate_floor=gate_floor))
    train = ManifestDataset(manifest, "train", features=store)
    val = ManifestDataset(manifest, "val", features=store)
    cfg = StageAConfig(**{"steps": steps, "batch_size": 8, "eval_every": 5, "fisher_batches": 1,
                          "learning_rate_projector": 3e-3, "learning_rate_adapter": 3e-3,
                          "kl_weight": 1.0, "retention_tolerance": 0.005, **overrides})
    sampler = BalancedBatchSampler([r.needs_audio for r in train.records], 8, 0.5, num_batches=steps, seed=0)
    train_loader = DataLoader(train, batch_sampler=sampler, collate_fn=LlavaCollator(tiny_base, 16, True))
    val_loader = DataLoader(val, batch_size=16, collate_fn=LlavaCollator(tiny_base, 16, False))
    return StageATrainer(model, train_loader, val_loader, cfg, checkpoint_dir=tmp_path, callbacks=callbacks,
                         progress=False, max_new_tokens=2)


def test_rollback_fires_on_a_planted_regression(trained_base, bench):
    def plant(trainer, step):  # after step 3, wreck the adapter: VL answers must change
        if step == 3:
            with torch.no_grad():
                for block in trainer.model.fusion.values():
                    block.o_proj.lora_B["default"].weight.normal_(std=50.0)
                    block.gate_logit.fill_(10.0)

    trainer = make_trainer(trained_base, bench, steps=5, callbacks=[plant], retention_tolerance=0.0)
    state = trainer.train()
    evals = [h for h in state.history if "retention_drop" in h]
    assert evals[0]["retention_drop"] == 0.0  # step 0 is the base model itself
    assert evals[-1]["retention_drop"] > 0.0 and evals[-1].get("rollback") == 1.0
    assert state.rollbacks == 1 and state.kl_weight == trainer.config.kl_weight * trainer.config.kl_weight_growth
    assert state.best_step == 0
    # The final weights are the best checkpoint within tolerance, i.e. identical to the base on VL questions.
    batch = next(iter(trainer.val_loader))
    feats = batch.audio_features
    budgets = batch.has_audio.long() * 12
    assert torch.equal(trainer.model(batch.vl, budgets, audio_features=feats), trainer.model(batch.vl, 0))


def test_resume_continues_the_same_run(tiny_base, bench, tmp_path):
    full = make_trainer(tiny_base, bench, steps=10, tmp_path=tmp_path / "a")
    full.train()
    expected = {k: v.clone() for k, v in full.params.items()}
    first = make_trainer(tiny_base, bench, steps=5, tmp_path=tmp_path / "b")
    first.train()
    resumed = make_trainer(tiny_base, bench, steps=10, tmp_path=tmp_path / "b")
    assert resumed.try_resume() and resumed.state.step == 5
    resumed.train()
    last = {k: v for k, v in resumed._trainable_state().items()}
    # Both runs end at their best checkpoints; compare the histories and the last raw weights instead.
    steps_full = [h["step"] for h in full.state.history]
    steps_resumed = [h["step"] for h in resumed.state.history]
    assert steps_full == steps_resumed
    for a, b in zip(full.state.history, resumed.state.history):
        for key in ("retention_drop", "audio_acc_safe"):
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-6)
    assert set(last) == set(expected)


def test_projector_standardisation_is_fitted_on_the_training_features(tiny_base, bench):
    manifest, store = bench
    trainer = make_trainer(tiny_base, bench, steps=1)
    train_ids = [r.id for r in manifest.by_split("train") if r.audio and store.has(r.id)]
    feats = torch.stack([store.get(i)[0] for i in train_ids])
    stats = trainer.model.projector.feature_stats
    assert bool(stats.fitted)
    torch.testing.assert_close(stats.mean, feats.reshape(-1, feats.shape[-1]).mean(0))  # every segment is a row


def test_gate_loss_opens_the_gate_for_audio_questions_only(trained_base, bench):
    """With the gate loss on, the learned gates separate: higher for questions that need audio than for VL-only
    questions carrying a clip (read after the last step, before the trainer restores its best checkpoint)."""
    seen = {}

    def read_gates(trainer, step):
        if step == trainer.config.steps:
            batch = next(iter(trainer.val_loader))
            with torch.no_grad():
                _, gates = trainer.model(batch.vl, 12, audio_features=batch.audio_features, return_gates=True)
            seen.update(gates=gates, needs=batch.needs_audio)

    make_trainer(trained_base, bench, steps=40, callbacks=[read_gates], gate_weight=5.0, kl_weight=0.0,
                 learning_rate_adapter=3e-2).train()
    gates, needs = seen["gates"], seen["needs"]
    assert needs.any() and (~needs).any()
    assert float(gates[needs].mean()) > float(gates[~needs].mean()) + 0.05  # without the gate loss: -0.015


def test_fisher_sees_the_whole_adapter_after_warm_up_and_not_at_step_0(trained_base, bench):
    """The real fusion block + projector: at step 0 the zero lora_B leaves one tensor per block with gradient, so
    the Fisher is first estimated after training started; then (nearly) every trainable tensor has an entry."""
    trainer = make_trainer(trained_base, bench, steps=10)
    trainer._fisher_batches = trainer._first_batches(1)
    trainer._refresh_fisher()  # what a step-0 estimate would see
    at_init = trainer.fisher_coverage
    assert at_init <= 0.25, at_init  # o_proj.lora_B of the block, and the projector never reached
    state = trainer.train()
    assert trainer.fisher_coverage >= 0.9, trainer.fisher_coverage
    assert all("fisher_coverage" in h for h in state.history if h["step"] > 0 and "retention_drop" in h)
    assert "fisher_coverage" not in state.history[0]


def test_fisher_sees_the_adapter_behind_a_gate_floor(trained_base, bench):
    """A floor above every gate shuts the adapter on every VL-only row, so their floored answers have no gradient
    at all; the Fisher is read with the gates unfloored (what the adapter would do once a gate opens)."""
    trainer = make_trainer(trained_base, bench, steps=1)
    model = trainer.model
    with torch.no_grad():  # as after training: the zero-initialised LoRA factors have moved
        for name, param in model.fusion.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)
    model.arch = dataclasses.replace(model.arch, gate_floor=0.99)
    batch = next(iter(trainer.val_loader))
    feats, budgets = trainer._validation_audio(batch)
    with torch.no_grad():
        _, gates = model(batch.vl, budgets, audio_features=feats, return_gates=True)
        assert float(gates.max()) < 0.99
        assert torch.equal(model(batch.vl, budgets, audio_features=feats), model(batch.vl, 0))  # shut: the base
    trainer._fisher_batches = trainer._first_batches(1)
    trainer._refresh_fisher()
    assert trainer.fisher_coverage >= 0.9, trainer.fisher_coverage


def test_retention_check_fuses_a_clip_into_every_vl_question(trained_base, bench):
    trainer = make_trainer(trained_base, bench, steps=1)
    batch = next(iter(trainer.val_loader))
    feats, budgets = trainer._validation_audio(batch)
    vl = torch.tensor([not r.needs_audio for r in batch.records])
    assert bool((budgets[vl] == 12).all())
    assert torch.equal(trainer._validation_audio(batch)[0], feats)  # the same distractor in every check
    with_clip = batch.has_audio
    assert torch.equal(feats[with_clip], batch.audio_features[with_clip])  # own clips are kept


def test_a_flip_tolerance_rolls_back_like_a_retention_break(trained_base, bench):
    def wreck(trainer, step):
        if step == 3:
            with torch.no_grad():
                for block in trainer.model.fusion.values():
                    block.o_proj.lora_B["default"].weight.normal_(std=50.0)
                    block.gate_logit.fill_(10.0)
                    block.gate_proj.weight.zero_()

    state = make_trainer(trained_base, bench, steps=5, callbacks=[wreck], retention_tolerance=1.0,
                         retention_flip_tolerance=0.05).train()
    check = next(h for h in state.history if h["step"] == 5)
    assert check["vl_flip_rate"] > 0.05 and check.get("rollback") == 1.0


def test_a_fresh_adapter_is_checked_from_the_base_answers_alone(trained_base, bench):
    trainer = make_trainer(trained_base, bench, steps=1)
    calls = []
    generate = trainer.model.generate_answers
    trainer.model.generate_answers = lambda vl, budgets, **kw: calls.append(budgets) or generate(vl, budgets, **kw)
    fresh = trainer.evaluate()
    assert calls and all(isinstance(b, int) and b == 0 for b in calls)  # no fused pass: a fresh adapter adds nothing
    trainer._base_val = None
    trainer.model.fusion_adds_nothing = lambda: False  # the fused pass, as for a trained adapter
    assert trainer.evaluate() == fresh
