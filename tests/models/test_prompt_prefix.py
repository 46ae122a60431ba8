"""A pass started from another pass's prompt prefix computes what the full pass computes, and skips the layers below the
first fusion block on the prompt."""

import pytest
import torch

from safe.models.safe_model import SAFEArchitecture, SAFEModel


@pytest.fixture()
def model(tiny_base):
    torch.manual_seed(0)
    safe = SAFEModel(tiny_base, SAFEArchitecture(audio_embed_dim=16, projector_hidden=32, fusion_layers=(-1,)))
    with torch.no_grad():  # a trained adapter: the fused answers differ from the base's
        for block in safe.fusion.values():
            block.o_proj.lora_B["default"].weight.normal_(std=0.5)
    return safe


@pytest.fixture()
def prompts(tiny_base):
    from PIL import Image

    images = [Image.new("RGB", (32, 32), (255, 0, 0)), None, Image.new("RGB", (32, 32), (0, 0, 255))]
    questions = ["what color is the circle?", "how many beeps do you hear?", "how many shapes are there?"]
    return tiny_base.encode(questions, images)


class CallCounter:
    """Counts the calls of a module that runs only when its decoder layer really computes."""

    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_hook(self._count)

    def _count(self, *_):
        self.calls += 1


def test_generation_from_the_prefix_gives_the_full_pass_answers_and_logits(model, prompts):
    feats = torch.randn(3, 16)
    assert model.fusion_layer_ids == [1]  # the tiny LM has 2 layers: layer 0 is the prefix
    with torch.no_grad(), model.recording_prefix() as recorder:
        model.generate_answers(prompts, 0, max_new_tokens=4)
    prefix = recorder.prefix
    assert prefix.layer == 1 and prefix.hidden.shape[:2] == prompts.input_ids.shape and len(prefix.keys) == 1
    lower = CallCounter(model.base.decoder_layers[0].mlp)
    for budget in (4, 8, 12):
        full = model.generate_answers(prompts, budget, audio_features=feats, max_new_tokens=4,
                                      return_first_logits=True)
        full_calls, lower.calls = lower.calls, 0
        with model.reusing_prefix(prefix):
            replayed = model.generate_answers(prompts, budget, audio_features=feats, max_new_tokens=4,
                                              return_first_logits=True)
        assert replayed[0] == full[0]
        assert torch.equal(replayed[1], full[1])
        assert lower.calls == full_calls - 1  # the prompt step skipped layer 0; each new token ran it
        lower.calls = 0
    lower.handle.remove()  # the tiny base is shared by the session's tests
    base_answers = model.generate_answers(prompts, 0, max_new_tokens=4)
    assert full[0] != base_answers  # the adapter changed answers, so the check above compared fused passes


def test_a_sub_batch_starts_from_its_rows_of_the_prefix(model, prompts):
    feats = torch.randn(3, 16)
    with torch.no_grad(), model.recording_prefix() as recorder:
        model.generate_answers(prompts, 0, max_new_tokens=4)
    rows = torch.tensor([0, 2])
    sub = model.base.batch_rows(prompts, rows)
    full = model.generate_answers(sub, 12, audio_features=feats[rows], max_new_tokens=4, return_first_logits=True)
    with model.reusing_prefix(recorder.prefix.rows(rows)):
        replayed = model.generate_answers(sub, 12, audio_features=feats[rows], max_new_tokens=4,
                                          return_first_logits=True)
    assert replayed[0] == full[0]
    torch.testing.assert_close(replayed[1], full[1])


def test_a_training_pass_from_the_teacher_prefix_gives_the_same_logits_and_gradients(model, tiny_batch):
    feats = torch.randn(3, 16)
    params = list(model.trainable_parameters().values())

    def fused_loss():
        logits = model(tiny_batch, [4, 12, 8], audio_features=feats, logits_to_keep=4)
        return logits, logits.square().mean()

    full_logits, loss = fused_loss()
    full_grads = torch.autograd.grad(loss, params, allow_unused=True)
    with torch.no_grad(), model.recording_prefix() as recorder:
        model(tiny_batch, 0, logits_to_keep=4)
    assert recorder.prefix.keys == ()  # a pass without a cache records the hidden states only
    with model.reusing_prefix(recorder.prefix):
        logits, loss = fused_loss()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    assert torch.equal(logits, full_logits)
    assert sum(g is not None for g in grads) > 0
    for got, want in zip(grads, full_grads):
        assert (got is None and want is None) or torch.equal(got, want)


def test_the_layers_are_restored_and_a_wrong_prefix_is_refused(model, prompts):
    layer = model.base.decoder_layers[0]
    with torch.no_grad(), model.recording_prefix() as recorder:
        model(prompts, 0, logits_to_keep=1)
    without_cache = recorder.prefix
    assert "forward" not in layer.__dict__ and not layer._forward_hooks
    assert not model.base.decoder_layers[1]._forward_pre_hooks
    with pytest.raises(ValueError, match="without one"), model.reusing_prefix(without_cache):
        model.generate_answers(prompts, 4, audio_features=torch.randn(3, 16))
    assert "forward" not in layer.__dict__  # restored after the error too
    two = model.base.batch_rows(prompts, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"recorded for \(3, "), model.reusing_prefix(without_cache):
        model(two, 4, audio_features=torch.randn(2, 16))
    with model.recording_prefix() as unused:
        pass
    with pytest.raises(RuntimeError, match="no pass reached"):
        unused.prefix
    moved = type(without_cache)(0, without_cache.hidden)
    with pytest.raises(ValueError, match="first fusion layer is 1"):
        model.reusing_prefix(moved)
