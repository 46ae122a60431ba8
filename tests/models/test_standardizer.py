import pytest
import torch

from safe.models.projectors import AudioProjector
from safe.models.standardizer import Standardizer


def test_fit_standardises_and_keeps_constant_features_centred():
    torch.manual_seed(0)
    x = torch.randn(200, 3) * torch.tensor([5.0, 0.1, 0.0]) + torch.tensor([10.0, -2.0, 7.0])
    s = Standardizer(3)
    torch.testing.assert_close(s(x), x)  # identity until fitted
    s.fit(x)
    z = s(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
    assert float(s.std[2]) == 1.0 and bool(s.fitted)  # constant feature: std 1, centred
    assert {"mean", "std", "fitted"} <= set(s.state_dict())


def test_fit_rejects_bad_shapes():
    s = Standardizer(3)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        s.fit(torch.zeros(5, 4))
    with pytest.raises(ValueError, match="at least 2 rows"):
        s.fit(torch.zeros(1, 3))


def test_projector_output_ignores_the_features_common_component():
    """Once fitted, a shift shared by every clip (the common component of pooled encoder outputs) is removed."""
    torch.manual_seed(0)
    proj = AudioProjector(8, 16, 4, hidden_dim=32)
    clips = torch.randn(50, 8)
    proj.fit_feature_stats(clips + 100.0)
    shifted = proj(clips + 100.0)
    proj2 = AudioProjector(8, 16, 4, hidden_dim=32)
    proj2.load_state_dict(proj.state_dict())
    proj2.fit_feature_stats(clips)
    torch.testing.assert_close(proj2(clips), shifted, atol=1e-4, rtol=1e-4)
    assert proj.feature_stats_fitted
