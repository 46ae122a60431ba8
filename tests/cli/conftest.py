"""Fixtures for the command tests: a real tiny SAFE bundle, good media, and a runner that checks the error contract.

The bundle is built in-process in seconds (an untrained 2-layer LLaVA, a random tiny Whisper, a logistic gate): the
commands load it exactly as they load a trained one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, tiny_base) -> Path:
    from safe.inference import assemble_bundle
    from safe.models.audio_encoders import build_audio_encoder
    from safe.models.safe_model import SAFEArchitecture, SAFEModel
    from safe.rl.state_features import state_dim
    from safe.models.budget_gate import BudgetGate, save_gate

    tmp = tmp_path_factory.mktemp("bundle")
    spec = "whisper-random:32x1"
    encoder = build_audio_encoder(spec, seed=0)
    model = SAFEModel(tiny_base, SAFEArchitecture(encoder.embed_dim, fusion_heads=4, projector_hidden=16),
                      audio_encoder=encoder)
    tiny_base.save_pretrained(tmp / "base")
    model.save_trainable(tmp / "stage_a", extra_config={"audio_encoder": spec, "seed": 0})
    save_gate(BudgetGate(state_dim(tiny_base.hidden_size), hidden_dim=0), tmp / "gate")
    return assemble_bundle(tmp / "safe", str(tmp / "base"), tmp / "stage_a", tmp / "gate")


@pytest.fixture()
def broken_bundle(bundle, tmp_path) -> Path:
    """A private copy of the bundle a test may damage."""
    return Path(shutil.copytree(bundle, tmp_path / "model"))


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    import soundfile as sf

    root = tmp_path_factory.mktemp("media")
    Image.new("RGB", (32, 32), (255, 0, 0)).save(root / "red.png")
    sf.write(root / "beep.wav", 0.3 * np.sin(np.linspace(0, 880 * np.pi, 16000)).astype(np.float32), 16000)
    return {"image": root / "red.png", "audio": root / "beep.wav"}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test runs in its own empty working folder with no inherited registry or project."""
    for key in ("MLFLOW_TRACKING_URI", "SAFE_PROJECT_DIR", "SAFE_MLFLOW_PARENT_RUN_ID", "SAFE_DEBUG"):
        monkeypatch.delenv(key, raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
