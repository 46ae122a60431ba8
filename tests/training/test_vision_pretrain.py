"""Tag pretraining of a new vision tower (safe.training.vision_pretrain)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from safe.training.vision_pretrain import PatchTagHead, exact_match, patch_states, pretrain_vision_tower, tag_targets

SHAPES = {"across": (3, 10), "down": (10, 3)}  # bar (height, width) in pixels


def test_tag_targets_mark_each_images_tags():
    y = tag_targets([["a", "c"], [], ["b", "unknown"]], ["a", "b", "c"])
    assert y.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]


def test_head_scores_each_tag_by_its_best_patch():
    head = PatchTagHead(2, 2)
    with torch.no_grad():
        head.score.weight.copy_(torch.eye(2))
        head.score.bias.zero_()
    states = torch.tensor([[[1.0, -5.0], [-3.0, 2.0], [0.0, 0.0]]])  # (B=1, P=3, D=2)
    assert head(states).tolist() == [[1.0, 2.0]]


def scenes(n: int, seed: int) -> tuple[torch.Tensor, list[list[str]]]:
    """32x32 black images with 1-2 white bars (across or down) at random places in distinct quadrants; tags = the
    bar directions present. Every image has the same pixel values, so telling the tags apart needs shape."""
    rng = np.random.default_rng(seed)
    pixels = torch.zeros(n, 3, 32, 32)
    tags = []
    for i in range(n):
        names = sorted(set(rng.choice(list(SHAPES), size=int(rng.integers(1, 3)))))
        for name, quadrant in zip(names, rng.permutation(4)):
            (h, w), y, x = SHAPES[name], 16 * (quadrant // 2), 16 * (quadrant % 2)
            y, x = y + int(rng.integers(1, 16 - h)), x + int(rng.integers(1, 16 - w))
            pixels[i, :, y:y + h, x:x + w] = 1.0
        tags.append(names)
    return pixels, tags


def tiny_tower() -> CLIPVisionModel:
    torch.manual_seed(0)
    return CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=32, patch_size=8))


def test_pretraining_teaches_the_tower_its_tags_and_keeps_the_best_epoch():
    train, val = scenes(192, seed=0), scenes(64, seed=1)
    tower = tiny_tower()
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    report = pretrain_vision_tower(tower, *train, *val, epochs=20, batch_size=32, lr=3e-3, eval_every=4,
                                   progress=False)
    assert report.tags == ["across", "down"]
    checked = [row for row in report.history if "vision_val_exact" in row]
    assert [row["vision_epoch"] for row in checked] == [4, 8, 12, 16, 20]
    best = max(checked, key=lambda row: row["vision_val_exact"])
    assert (report.best_epoch, report.best_val_exact) == (best["vision_epoch"], best["vision_val_exact"])
    assert report.best_val_exact >= 0.9, report.history
    # A fresh linear probe on the pretrained patch states finds the tags; on the untrained tower's it cannot.
    def probe_exact(state) -> float:
        tower.load_state_dict(state)
        tower.requires_grad_(False)
        torch.manual_seed(0)
        head = PatchTagHead(32, 2)
        optimizer = torch.optim.Adam(head.parameters(), lr=3e-2)
        states = patch_states(tower, train[0])
        for _ in range(150):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(states), tag_targets(train[1], report.tags))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        tower.requires_grad_(True)
        return exact_match(tower, head, val[0], tag_targets(val[1], report.tags))
    trained = {k: v.clone() for k, v in tower.state_dict().items()}
    assert probe_exact(trained) >= 0.9  # measured 0.95
    assert probe_exact(before) <= 0.75  # measured 0.67


def test_pretraining_refuses_mismatched_or_untagged_inputs():
    pixels, tags = scenes(8, seed=0)
    with pytest.raises(ValueError, match="differ in length"):
        pretrain_vision_tower(tiny_tower(), pixels, tags[:-1], pixels, tags, epochs=1, batch_size=4, lr=1e-3)
    with pytest.raises(ValueError, match="no tags"):
        pretrain_vision_tower(tiny_tower(), pixels, [[]] * 8, pixels, tags, epochs=1, batch_size=4, lr=1e-3)


def test_base_vl_pretrains_the_tower_then_keeps_it_frozen(bench, tmp_path, monkeypatch):
    """train_base_vl with image tags: the tower is tag-pretrained on the training images, and the saved LLaVA's
    tower is exactly the pretrained one (the answer training left it alone)."""
    import safe.training.base_vl as base_vl_training
    from safe.config import BaseVLConfig, build_config
    from safe.models.base_vl import BaseVLModel

    manifest, _ = bench
    pretrained = {}

    def recording(tower, *args, **kwargs):
        report = pretrain_vision_tower(tower, *args, **kwargs)
        pretrained.update({k: v.clone() for k, v in tower.state_dict().items()})
        return report

    monkeypatch.setattr(base_vl_training, "pretrain_vision_tower", recording)
    model_cfg = build_config({"profile": "tiny", "model": {"vision_hidden": 32, "text_hidden": 32,
                                                           "text_intermediate": 64}}).model
    colour = lambda record: [["red", "blue"][int(record.id[2:]) % 2]]  # noqa: E731  (the fixture's image colours)
    cfg = BaseVLConfig(epochs=2, batch_size=16, lr=3e-3, target_val_acc=1.01, vision_pretrain_epochs=3,
                       vision_pretrain_batch_size=16)
    report = base_vl_training.train_base_vl(manifest, model_cfg, cfg, 32, tmp_path / "base", progress=False,
                                            image_tags=colour)
    assert report.vision is not None and report.vision.tags == ["blue", "red"]
    assert report.vision.train_images == 64  # every training image, the audio rows' too
    saved = BaseVLModel.from_pretrained(tmp_path / "base").llava.model.vision_tower.state_dict()
    assert pretrained and all(torch.equal(saved[k], v) for k, v in pretrained.items())
    untagged = base_vl_training.train_base_vl(manifest, model_cfg, cfg, 32, tmp_path / "plain", progress=False)
    assert untagged.vision is None
