import pytest

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
