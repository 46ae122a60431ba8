import pytest
import torch

from safe.data.media import load_image
from safe.training.losses import FisherPenalty, answer_loss, answer_positions, answer_window, retention_kl


def test_kl_is_zero_when_student_equals_teacher():
    logits = torch.randn(2, 6, 11)
    labels = torch.full((2, 6), -100)
    labels[:, -2:] = 3
    pos = answer_positions(labels)
    assert retention_kl(logits, logits.clone(), pos).item() == 0.0
    assert retention_kl(logits + 0.5 * torch.randn_like(logits), logits, pos).item() > 0.0


def test_kl_and_task_loss_without_labelled_positions_are_zero_with_grad():
    logits = torch.randn(2, 6, 11, requires_grad=True)
    none = torch.zeros(2, 5, dtype=torch.bool)
    kl = retention_kl(logits, logits.detach(), none)
    task = answer_loss(logits, torch.full((2, 6), -100))
    (kl + task).backward()
    assert kl.item() == 0.0 and task.item() == 0.0


def test_answer_loss_matches_manual_cross_entropy():
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[-100, -100, 2, 4]])
    manual = -(torch.log_softmax(logits[0, 1], -1)[2] + torch.log_softmax(logits[0, 2], -1)[4]) / 2
    assert torch.allclose(answer_loss(logits, labels), manual)


def test_fisher_penalty_zero_at_anchor_and_grows_with_distance():
    lin = torch.nn.Linear(3, 2)
    params = dict(lin.named_parameters())
    batches = [torch.randn(4, 3) for _ in range(3)]
    penalty = FisherPenalty.estimate(params, lambda x: lin(x).pow(2).mean(), batches)
    assert penalty().item() == 0.0
    values = []
    direction = {k: torch.randn_like(p) for k, p in params.items()}
    for step in (0.1, 0.2, 0.4):
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(penalty.anchor[k] + step * direction[k])
        values.append(penalty().item())
    assert 0 < values[0] < values[1] < values[2]
    assert abs(values[1] / values[0] - 4.0) < 1e-3  # quadratic in the distance


def test_gate_loss_is_binary_cross_entropy_over_the_selected_rows():
    from safe.training.losses import gate_loss

    gates = torch.tensor([[0.9, 0.8], [0.2, 0.1], [0.5, 0.5]], requires_grad=True)  # (B, L)
    needs = torch.tensor([True, False, True])
    rows = torch.tensor([True, True, False])  # the third row carries no clip: not counted
    expected = -(torch.log(torch.tensor([0.9, 0.8])).mean() + torch.log(torch.tensor([0.8, 0.9])).mean()) / 2
    torch.testing.assert_close(gate_loss(gates, needs, rows), expected)
    torch.testing.assert_close(gate_loss(gates, needs, rows, normalizer=4.0), expected * 2 / 4)
    wrong = gate_loss(1 - gates.detach(), needs, rows)
    assert wrong > gate_loss(gates, needs, rows)  # gates open on VL-only rows cost more
    none = gate_loss(gates, needs, torch.zeros(3, dtype=torch.bool))
    none.backward()
    assert none.item() == 0.0 and gates.grad is not None


def test_answer_window_gives_the_same_losses_from_the_answers_logits_alone(trained_base, bench):
    """The training losses read the LM head at the answers' positions only (`logits_to_keep`); every other
    position's logits are never computed, and the losses do not change."""
    manifest, _ = bench
    records = manifest.by_split("val")[:8]  # colour and beep-count questions: prompts of different lengths
    images = [load_image(manifest.resolve(r.image)) for r in records]
    batch = trained_base.encode([r.question for r in records], images, [r.answer for r in records])
    full = trained_base(batch)  # (B, T, V)
    window = answer_window(batch.labels)
    kept = trained_base(batch, logits_to_keep=window)  # (B, W, V)
    labels = batch.labels[:, -window:]
    assert 2 < window < batch.labels.shape[1] and kept.shape == (len(records), window, full.shape[-1])
    assert torch.allclose(answer_loss(kept, labels), answer_loss(full, batch.labels), atol=1e-5)
    teacher = full + torch.randn_like(full)
    kl_full = retention_kl(full, teacher, answer_positions(batch.labels))
    assert kl_full > 0
    assert torch.allclose(retention_kl(kept, teacher[:, -window:], answer_positions(labels)), kl_full, atol=1e-5)
    assert answer_window(torch.full((2, 5), -100)) == 5  # nothing labelled: every position


def test_grounding_targets_are_the_finest_tokens_inside_the_span_the_budget_has():
    from safe.training.losses import grounding_targets

    # the second of 12 sounds, the first twelfth, no span, the whole clip
    spans = torch.tensor([[1 / 12 + 0.01, 2 / 12 - 0.01], [0.0, 1 / 12], [float("nan")] * 2, [0.0, 1.0]])
    picked = {b: grounding_targets(spans, torch.full((4,), b), 12) for b in (0, 4, 8, 12)}
    on = lambda t: t.nonzero().flatten().tolist()  # noqa: E731
    assert [on(picked[b][0]) for b in (4, 8, 12)] == [[0], [0], [8]]  # its quarter until its own twelfth comes
    assert [on(picked[b][1]) for b in (4, 8, 12)] == [[0], [4], [4]]  # the first twelfth comes at budget 8
    assert not picked[12][2].any() and not picked[0].any()  # no span, or no audio: no target
    assert on(picked[4][3]) == [0, 1, 2, 3] and on(picked[12][3]) == list(range(12))


def test_grounding_loss_is_the_log_attention_mass_on_the_targets_at_the_answer():
    from safe.training.losses import grounding_loss

    labels = torch.tensor([[-100, -100, -100, 5], [-100, -100, 7, 8]])  # (B, T): answers at the end
    targets = torch.zeros(2, 3, dtype=torch.bool)
    targets[0, 2] = True  # row 1 has no target: never counted
    probs = torch.full((2, 2, 4, 3), 1 / 3, requires_grad=True)  # (B, H, T, K)
    loss = grounding_loss([probs, probs], targets, labels)
    torch.testing.assert_close(loss, -torch.log(torch.tensor(1 / 3)))  # one position predicts row 0's answer
    loss.backward()
    assert probs.grad[0, :, 2, 2].lt(0).all() and probs.grad[1].eq(0).all()  # more mass on the target lowers it
    sharp = torch.zeros(2, 2, 4, 3)
    sharp[..., 2] = 1.0
    assert grounding_loss([sharp], targets, labels).item() == pytest.approx(0.0, abs=1e-5)
    assert grounding_loss([probs], torch.zeros(2, 3, dtype=torch.bool), labels).item() == 0.0


def test_grounding_loss_teaches_a_fusion_block_to_pick_a_token_by_its_place():
    """What the answer loss alone never taught (docs/EXPERIMENTS.md#grounding): a question picks the audio token at
    a place. Two questions ask for tokens 4 and 8 of 12 tokens that differ only in content."""
    from safe.models.fusion_adapter import CrossAttentionBlock
    from safe.training.losses import grounding_loss

    torch.manual_seed(0)
    block = CrossAttentionBlock(16, 2, rank=4)
    for p in block.parameters():
        p.requires_grad_(False)
    trainable = [p for n, p in block.named_parameters() if "lora_" in n or "place_keys" in n or "question_query" in n]
    for p in trainable:
        p.requires_grad_(True)
    nn_init = torch.nn.init
    for name, p in block.named_parameters():
        if "lora_B" in name:
            nn_init.normal_(p, std=0.02)  # as after a first step: the updates reach q and k
    questions = torch.randn(2, 1, 16)  # (2 questions, T=1, D)
    targets = torch.zeros(2, 12, dtype=torch.bool)
    targets[0, 4] = targets[1, 8] = True
    labels = torch.tensor([[-100, 1]]).expand(2, 2)
    opt = torch.optim.Adam(trainable, lr=0.05)

    def mass() -> torch.Tensor:
        audio = torch.randn(2, 12, 16)
        block.attention_sink = []
        block(torch.cat([questions, questions], 1), audio, gate=1.0)
        (probs,) = block.attention_sink
        block.attention_sink = None
        return probs, (probs.mean(1)[:, 0] * targets).sum(-1)  # (B,) mass on the asked token

    before = mass()[1].detach()
    for _ in range(60):
        probs, _ = mass()
        loss = grounding_loss([probs], targets, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = mass()[1].detach()
    assert before.max() < 0.2 and after.min() > 0.8
