import numpy as np
import pytest
import torch
from PIL import Image

from safe.models.safe_model import SAFEArchitecture, SAFEModel


class CountingEncoder(torch.nn.Module):
    """A real (random, frozen) linear audio encoder that counts its calls; stands in for Whisper's interface."""

    def __init__(self, dim=16):
        super().__init__()
        self.embed_dim = dim
        self.proj = torch.nn.Linear(160, dim)
        self.calls = 0

    def encode(self, waveforms):
        from safe.models.audio_encoders import AudioEncoding

        self.calls += 1
        frames = torch.stack([torch.as_tensor(w[:1600]).view(10, 160).float() for w in waveforms])  # (B, 10, 160)
        sequence = self.proj(frames)  # (B, 10, D)
        return AudioEncoding(sequence, torch.ones(sequence.shape[:2], dtype=torch.bool), sequence.mean(1))


@pytest.fixture()
def model(tiny_base):
    torch.manual_seed(0)
    return SAFEModel(tiny_base, SAFEArchitecture(audio_embed_dim=16, projector_hidden=32), audio_encoder=CountingEncoder())


def perturb(model):
    with torch.no_grad():
        for block in model.fusion.values():
            block.o_proj.lora_B["default"].weight.normal_(std=0.5)


def test_at_init_and_budget_zero_logits_equal_base(model, tiny_batch):
    base = model.base(tiny_batch)
    feats = torch.randn(3, 16)
    assert torch.equal(model(tiny_batch, 0), base)
    assert torch.equal(model(tiny_batch, [4, 8, 12], audio_features=feats), base)  # fresh adapters are identity
    perturb(model)
    mixed = model(tiny_batch, [0, 12, 4], audio_features=feats)
    assert torch.equal(mixed[0], base[0])
    assert not torch.equal(mixed[1], base[1])


def test_budget_zero_never_runs_the_audio_encoder(model, tiny_batch):
    waves = [np.random.randn(16000).astype(np.float32) for _ in range(3)]
    model(tiny_batch, 0, waveforms=waves)
    assert model.audio_encoder.calls == 0
    model(tiny_batch, [0, 4, 0], waveforms=waves)
    assert model.audio_encoder.calls == 1


def test_only_projector_and_adapters_train(model):
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.startswith(("projector.", "fusion.")) for n in names)
    summary = model.trainable_summary()
    assert 0 < summary["trainable_fraction"] < 1
    print(f"trainable fraction: {summary['trainable_fraction']:.3f}")


def test_base_state_dict_keys_are_unchanged(model, tiny_base):
    keys = set(model.base.llava.state_dict())
    assert any(k.startswith("model.language_model.layers.1.") for k in keys)
    assert not any("fusion" in k for k in keys)


def test_bad_budgets_and_missing_audio(model, tiny_batch):
    with pytest.raises(ValueError, match=r"not in the allowed set \[0, 4, 8, 12\]"):
        model(tiny_batch, [0, 5, 4], audio_features=torch.randn(3, 16))
    with pytest.raises(ValueError, match="needs audio_features or waveforms"):
        model(tiny_batch, [0, 4, 4])
    with pytest.raises(ValueError, match="no audio"):
        model(tiny_batch, [0, 4, 4], waveforms=[None, None, np.zeros(1600, np.float32)])
    with pytest.raises(ValueError, match="2 budgets for a batch of 3"):
        model(tiny_batch, [0, 4])


def test_save_load_round_trip(model, tiny_base, tiny_batch, tmp_path):
    perturb(model)
    feats = torch.randn(3, 16)
    before = model(tiny_batch, [4, 8, 12], audio_features=feats)
    model.save_trainable(tmp_path / "m", extra_config={"audio_encoder": "test"})
    other = SAFEModel(tiny_base, model.arch)
    other.load_trainable(tmp_path / "m")
    assert torch.equal(other(tiny_batch, [4, 8, 12], audio_features=feats), before)
    with pytest.raises(FileNotFoundError, match="safe_trainable"):
        other.load_trainable(tmp_path)


def test_place_keys_and_words_query_are_saved_and_an_older_bundle_without_them_loads(model, tiny_base, tiny_batch,
                                                                                    tmp_path):
    from safetensors.torch import load_file, save_file

    perturb(model)
    feats = torch.randn(3, 16)
    older = model(tiny_batch, [4, 8, 12], audio_features=feats)  # place keys and the words' query still zero
    model.save_trainable(tmp_path / "old")
    path = tmp_path / "old" / "safe_trainable.safetensors"
    save_file({k: v for k, v in load_file(str(path)).items()
               if not any(n in k for n in ("place_keys", "question_query", "words_norm"))}, str(path))
    other = SAFEModel(tiny_base, model.arch)
    other.load_trainable(tmp_path / "old")
    assert torch.equal(other(tiny_batch, [4, 8, 12], audio_features=feats), older)
    with torch.no_grad():
        for block in model.fusion.values():
            block.place_keys.normal_()
            block.question_query.weight.normal_(std=0.1)
    moved = model(tiny_batch, [4, 8, 12], audio_features=feats)
    assert not torch.equal(moved, older)
    model.save_trainable(tmp_path / "new")
    other.load_trainable(tmp_path / "new")
    assert torch.equal(other(tiny_batch, [4, 8, 12], audio_features=feats), moved)


def test_fusion_lora_is_a_peft_adapter_that_peft_loads_back(model, tiny_base, tiny_batch, tmp_path):
    from peft import LoraConfig, load_peft_weights, set_peft_model_state_dict

    perturb(model)
    feats = torch.randn(3, 16)
    before = model(tiny_batch, [4, 8, 12], audio_features=feats)
    model.save_trainable(tmp_path / "m")
    config = LoraConfig.from_pretrained(str(tmp_path / "m" / "fusion_lora"))
    assert config.r == model.arch.lora_rank and set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    weights = load_peft_weights(str(tmp_path / "m" / "fusion_lora"))
    assert weights and all(".lora_" in k for k in weights)
    # A fresh model with the non-LoRA parts of the bundle: its output differs until peft loads the adapter.
    other = SAFEModel(tiny_base, model.arch)
    from safetensors.torch import load_file

    rest = load_file(str(tmp_path / "m" / "safe_trainable.safetensors"))
    assert not any(".lora_" in k for k in rest)
    other.projector.load_state_dict({k[10:]: v for k, v in rest.items() if k.startswith("projector.")})
    other.fusion.load_state_dict({k[7:]: v for k, v in rest.items() if k.startswith("fusion.")}, strict=False)
    assert not torch.equal(other(tiny_batch, [4, 8, 12], audio_features=feats), before)
    set_peft_model_state_dict(other.fusion, weights)
    assert torch.equal(other(tiny_batch, [4, 8, 12], audio_features=feats), before)
    (tmp_path / "m" / "fusion_lora" / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="fusion_lora/adapter_model.safetensors"):
        other.load_trainable(tmp_path / "m")


def test_host_initialised_fusion_is_the_identity_at_init(tiny_base, tiny_batch):
    arch = SAFEArchitecture(audio_embed_dim=16, projector_hidden=32, fusion_init="host")
    model = SAFEModel(tiny_base, arch)
    host = tiny_base.decoder_layers[-1].self_attn
    block = next(iter(model.fusion.values()))
    assert torch.equal(block.q_proj.base_layer.weight, host.q_proj.weight.float())
    feats = torch.randn(3, 16)
    assert torch.equal(model(tiny_batch, [4, 8, 12], audio_features=feats), model(tiny_batch, 0))


def test_generation_uses_audio_only_where_budgeted(model, tiny_batch):
    perturb(model)
    feats = torch.randn(3, 16)
    base = model.generate_answers(tiny_batch, 0)
    mixed = model.generate_answers(tiny_batch, [0, 12, 12], audio_features=feats)
    assert mixed[0] == base[0]


def perturb_gates(model):
    with torch.no_grad():
        for block in model.fusion.values():
            block.gate_proj.weight.normal_(std=1.0)


def test_gates_read_the_prompt_only(model, tiny_base, tiny_batch):
    """The learned gate is one value per example and fusion block, read from the prompt's text tokens: appending
    the labelled answer (training) or padding the example into a batch does not change it."""
    perturb(model)
    perturb_gates(model)
    feats = torch.randn(3, 16)
    _, gates = model(tiny_batch, 12, audio_features=feats, return_gates=True)  # answers appended
    assert gates.shape == (3, len(model.fusion)) and bool(((gates > 0) & (gates < 1)).all())
    assert not torch.allclose(gates[0], gates[2])  # different questions, different gates
    images = [Image.new("RGB", (32, 32), (255, 0, 0)), None, Image.new("RGB", (32, 32), (0, 0, 255))]
    questions = ["what color is the circle?", "how many beeps do you hear?", "how many shapes are there?"]
    prompts = tiny_base.encode(questions, images)  # no answers
    _, prompt_gates = model(prompts, 12, audio_features=feats, return_gates=True)
    torch.testing.assert_close(prompt_gates, gates)
    alone = tiny_base.encode(questions[:1], images[:1])  # no left padding
    _, alone_gates = model(alone, 12, audio_features=feats[:1], return_gates=True)
    torch.testing.assert_close(alone_gates, gates[:1])
    assert model(tiny_batch, 0, return_gates=True)[1] is None  # no audio anywhere: no gate ran
    assert model(tiny_batch, 12, audio_features=feats, gate=1.0, return_gates=True)[1] is None  # forced gate


@pytest.mark.parametrize("reads", ["first", "fused", "words"])
def test_generation_reuses_the_prompt_gate(tiny_base, reads):
    """Generation's later steps see one new token each; the gate they use is the prompt's (first step's) gate, so
    greedy answers equal those from full forwards over prompt + answer-so-far, wherever the gate reads."""
    torch.manual_seed(0)
    model = SAFEModel(tiny_base, SAFEArchitecture(audio_embed_dim=16, projector_hidden=32, fusion_layers=(0, 1),
                                                  gate_reads=reads))
    perturb(model)
    perturb_gates(model)
    feats = torch.randn(1, 16)
    prompt = tiny_base.encode(["how many shapes are there?"], [Image.new("RGB", (32, 32), (0, 0, 255))])
    generated = model.generate_answers(prompt, 12, audio_features=feats, max_new_tokens=3)[0]
    tokens = prompt.input_ids
    gates0 = model(prompt, 12, audio_features=feats, return_gates=True)[1]
    for _ in range(3):  # greedy decoding by full forwards, the answer-so-far labelled (outside the gate's input)
        labels = torch.full_like(tokens, -100)
        labels[:, prompt.input_ids.shape[1]:] = tokens[:, prompt.input_ids.shape[1]:]
        batch = type(prompt)(tokens, torch.ones_like(tokens), prompt.pixel_values, labels)
        logits, gates = model(batch, 12, audio_features=feats, return_gates=True)
        torch.testing.assert_close(gates, gates0)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        if int(nxt) == tiny_base.tokenizer.eos_token_id:
            break
        tokens = torch.cat([tokens, nxt], dim=1)
    expected = tiny_base.tokenizer.decode(tokens[0, prompt.input_ids.shape[1]:], skip_special_tokens=True).strip()
    assert generated == expected


def two_block_model(tiny_base, **arch):
    torch.manual_seed(0)
    model = SAFEModel(tiny_base, SAFEArchitecture(audio_embed_dim=16, projector_hidden=32, fusion_layers=(0, 1), **arch))
    perturb(model)
    perturb_gates(model)
    return model


def test_gates_read_the_question_not_the_clip(tiny_base, tiny_batch):
    """Read from each layer's fused states (`fused`), the second block's gate sees the audio the first block added,
    so the clip moves it; read from the first fusion layer's states (`first`), no clip can."""
    clips = torch.randn(2, 3, 16)
    model = two_block_model(tiny_base, gate_reads="first")
    gates = [model(tiny_batch, 12, audio_features=clip, return_gates=True)[1] for clip in clips]  # 2 x (3, 2)
    torch.testing.assert_close(gates[0], gates[1])
    model = two_block_model(tiny_base, gate_reads="fused")
    gates = [model(tiny_batch, 12, audio_features=clip, return_gates=True)[1] for clip in clips]
    torch.testing.assert_close(gates[0][:, 0], gates[1][:, 0])  # the first block reads states without audio
    assert not torch.allclose(gates[0][:, 1], gates[1][:, 1])


def test_words_gates_read_the_prompts_input_embeddings(tiny_base, tiny_batch):
    """`words`: each gate pools the LM's input embeddings of the prompt's text tokens, a word at a time (answers
    appended by training, image placeholders and padding left out), so neither the clip nor the sentence's
    context moves it."""
    model = two_block_model(tiny_base, gate_reads="words")
    clips = torch.randn(2, 3, 16)
    gates = [model(tiny_batch, 12, audio_features=clip, return_gates=True)[1] for clip in clips]  # 2 x (3, 2)
    torch.testing.assert_close(gates[0], gates[1])
    embeddings = tiny_base.llava.get_input_embeddings()(tiny_batch.input_ids).float()  # (B, T, D)
    text = tiny_base.prompt_text_mask(tiny_batch)
    for i, block in enumerate(model.fusion.values()):
        expected = block.example_gate(block.question_summary(embeddings, text)).view(-1)  # (B,)
        torch.testing.assert_close(gates[0][:, i], expected)


def test_gates_below_the_floor_leave_the_base_answer_exactly(tiny_base, tiny_batch):
    model = two_block_model(tiny_base, gate_floor=0.5)
    with torch.no_grad():
        for block in model.fusion.values():
            block.gate_proj.weight.zero_()
            block.gate_logit.fill_(-1.0)  # every gate sigmoid(-1) = 0.27
    feats = torch.randn(3, 16)
    logits, gates = model(tiny_batch, 12, audio_features=feats, return_gates=True)
    assert torch.equal(logits, tiny_base(tiny_batch))
    torch.testing.assert_close(gates, torch.full_like(gates, torch.sigmoid(torch.tensor(-1.0)).item()))  # unfloored
    with torch.no_grad():
        for block in model.fusion.values():
            block.gate_logit.fill_(1.0)  # 0.73: above the floor
    assert not torch.equal(model(tiny_batch, 12, audio_features=feats), tiny_base(tiny_batch))


def perturb_projector(model):
    with torch.no_grad():
        model.projector.position.normal_(std=1.0)


def test_save_load_round_trip_with_segment_features(model, tiny_base, tiny_batch, tmp_path):
    perturb(model)
    perturb_projector(model)
    feats = torch.randn(3, 12, 16)  # (B, S, D) coarse-to-fine segment summaries
    before = model(tiny_batch, [4, 8, 12], audio_features=feats)
    model.save_trainable(tmp_path / "m", extra_config={"audio_encoder": "test"})
    other = SAFEModel(tiny_base, model.arch)
    other.load_trainable(tmp_path / "m")
    assert torch.equal(other.projector.position, model.projector.position)
    assert torch.equal(other(tiny_batch, [4, 8, 12], audio_features=feats), before)


def test_a_budget_reads_only_its_own_segments(model, tiny_batch):
    """Budget 8 attends to the first 8 tokens, made from the first 8 segments: the finest round changes only
    budget 12's answers."""
    perturb(model)
    perturb_projector(model)
    feats = torch.randn(3, 12, 16)
    finer = feats.clone()
    finer[:, 8:] = torch.randn(3, 4, 16)
    assert torch.equal(model(tiny_batch, 8, audio_features=feats), model(tiny_batch, 8, audio_features=finer))
    assert not torch.equal(model(tiny_batch, 12, audio_features=feats), model(tiny_batch, 12, audio_features=finer))


def test_waveforms_give_the_cached_segments(model, tiny_batch):
    """encode_audio returns what the feature cache stores for a clip: its segment summaries, not the pooled vector."""
    perturb(model)
    waves = [np.random.default_rng(i).standard_normal(1600).astype(np.float32) * 0.1 for i in range(3)]
    segments = model.audio_encoder.encode(waves).segments  # (3, 12, 16)
    assert model.encode_audio(waves).shape == (3, 12, 16)
    torch.testing.assert_close(model(tiny_batch, 12, waveforms=waves), model(tiny_batch, 12, audio_features=segments))


def test_recording_attention_keeps_the_outputs_and_gives_each_blocks_weights(model, tiny_batch):
    """Stage A's grounding loss reads the fusion attention: recording it computes the same logits (the explicit
    softmax instead of the fused kernel), with weights over the budget's tokens only, and stops on leaving."""
    perturb(model)
    perturb_projector(model)
    feats = torch.randn(3, 12, 16)
    budgets = torch.tensor([4, 0, 12])
    plain = model(tiny_batch, budgets, audio_features=feats)
    with model.recording_attention() as weights:
        recorded = model(tiny_batch, budgets, audio_features=feats)
    torch.testing.assert_close(recorded, plain, rtol=1e-5, atol=1e-5)
    T = tiny_batch.input_ids.shape[1]
    assert len(weights) == len(model.fusion)
    for probs in weights:  # (B, H, T, K)
        assert probs.shape == (3, model.arch.fusion_heads, T, 12) and probs.requires_grad
        torch.testing.assert_close(probs[[0, 2]].sum(-1), torch.ones(2, model.arch.fusion_heads, T))
        assert probs[0, ..., 4:].eq(0).all()  # budget 4 never listens past its 4 tokens
    model(tiny_batch, budgets, audio_features=feats)
    assert len(weights) == len(model.fusion) and all(b.attention_sink is None for b in model.fusion.values())
