import pytest
import torch

from safe.data.datasets import BalancedBatchSampler


@pytest.mark.parametrize("ratio,batch", [(0.5, 8), (0.25, 8), (0.5, 7)])
def test_every_batch_has_the_configured_ratio(ratio, batch):
    needs = [i % 5 == 0 for i in range(200)]  # 20% audio-dependent in the data, ratio enforced per batch
    sampler = BalancedBatchSampler(needs, batch, ratio, num_batches=30, seed=1)
    batches = list(sampler)
    assert len(batches) == 30
    for b in batches:
        assert len(b) == batch
        assert sum(needs[i] for i in b) == round(batch * ratio)


def test_sampler_is_seeded_and_resumable():
    needs = [i % 2 == 0 for i in range(50)]
    a = list(BalancedBatchSampler(needs, 6, 0.5, num_batches=10, seed=3))
    s = BalancedBatchSampler(needs, 6, 0.5, num_batches=10, seed=3)
    s.set_start(4)
    assert list(s) == a[4:]
    assert list(BalancedBatchSampler(needs, 6, 0.5, num_batches=10, seed=3)) == a


def test_sampler_errors_when_a_group_is_empty():
    with pytest.raises(ValueError, match="no audio-dependent"):
        BalancedBatchSampler([False] * 10, 4, 0.5)


def test_balanced_sampler_weights_sources_and_families():
    from safe.data.datasets import BalancedBatchSampler, example_weights
    from safe.data.manifest import ManifestRecord

    def rec(i, source, family, needs):
        return ManifestRecord(id=f"r{i}", split="train", source=source, family=family, question="q", answer="a",
                              image="x.png", audio="a.wav" if needs else None, needs_audio=needs)

    # 90 VQAv2 rows and 10 GQA rows (VL-only); 50 Clotho and 50 AudioCaps rows (audio).
    records = [rec(i, "vqav2", "vl", False) for i in range(90)] + [rec(90 + i, "gqa", "vl", False) for i in range(10)]
    records += [rec(100 + i, "clotho", "audio_caption", True) for i in range(50)]
    records += [rec(150 + i, "audiocaps", "audio_caption", True) for i in range(50)]
    assert example_weights(records, {}, {}) is None  # unweighted: the sampler's original cycling order
    weights = example_weights(records, {"gqa": 9.0, "audiocaps": 0.0}, {})
    sampler = BalancedBatchSampler([r.needs_audio for r in records], 20, 0.5, num_batches=200, seed=0, weights=weights)
    drawn = [records[i] for batch in sampler for i in batch]
    vl = [r for r in drawn if not r.needs_audio]
    assert abs(sum(r.source == "gqa" for r in vl) / len(vl) - 0.5) < 0.05  # 10 x 9 vs 90 x 1: half the VL half
    assert not any(r.source == "audiocaps" for r in drawn)  # weight 0: never drawn
    assert all(sum(records[i].needs_audio for i in batch) == 10 for batch in sampler)
    assert [b for b in sampler] == [b for b in BalancedBatchSampler(
        [r.needs_audio for r in records], 20, 0.5, num_batches=200, seed=0, weights=weights)]  # seeded
    with pytest.raises(ValueError, match="every audio-dependent example has weight 0"):
        BalancedBatchSampler([r.needs_audio for r in records], 20, 0.5,
                             weights=example_weights(records, {"clotho": 0, "audiocaps": 0}, {}))


def test_a_records_audio_span_reaches_the_batch_as_shares_of_its_clip():
    from safe.data.datasets import Example, _span_share
    from safe.data.manifest import ManifestRecord

    def example(span, seconds):
        record = ManifestRecord(id="a", split="train", source="s", family="audio_sequence", question="q?",
                                answer="dog", audio="a.wav", needs_audio=True, audio_span=span)
        return Example(record, None, None, torch.tensor([0.1, 0.5, seconds]), None)

    torch.testing.assert_close(_span_share(example((0.6, 1.2), 2.4)), torch.tensor([0.25, 0.5]))
    assert _span_share(example((0.6, 3.0), 2.4))[1].item() == 1.0  # past the end: clipped to the clip
    assert _span_share(example(None, 2.4)).isnan().all() and _span_share(example((0.1, 0.2), 0.0)).isnan().all()
