"""base_vl's question language-model loss (`base_vl.question_lm_weight`): the from-scratch LM reads audio questions."""

from __future__ import annotations

import torch

from safe.config import BaseVLConfig, build_config
from safe.models.base_vl import BaseVLModel, PromptEncoder
from safe.training.base_vl import _question_lm_loss, train_base_vl

AUDIO_QUESTION = "how many beeps do you hear?"  # the bench's audio rows: never a VL training question


def _text_loss(folder) -> float:
    """Next-token loss of the saved base on the audio question's text-only prompt."""
    base = BaseVLModel.from_pretrained(folder)
    with torch.no_grad():
        return float(_question_lm_loss(base.llava, PromptEncoder(base.processor), [AUDIO_QUESTION], base.device, 1))


def test_question_lm_loss_teaches_the_base_the_audio_questions_words(bench, tmp_path):
    manifest, _ = bench
    model_cfg = build_config({"profile": "tiny", "model": {"vision_hidden": 32, "text_hidden": 32,
                                                           "text_intermediate": 64}}).model
    losses = {}
    for weight in (0.0, 1.0):
        out = tmp_path / f"base_{weight}"
        cfg = BaseVLConfig(epochs=30, batch_size=16, lr=3e-3, target_val_acc=1.0, question_lm_weight=weight)
        report = train_base_vl(manifest, model_cfg, cfg, 32, out, progress=False)
        assert report.best_val_acc >= 0.9, report.history  # the VL task still trains alongside
        losses[weight] = _text_loss(out)
    # Without the loss the base never read "beeps" or "hear"; with it, it predicts the question's words.
    assert losses[1.0] < 0.8 * losses[0.0], losses
