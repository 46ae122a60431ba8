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
