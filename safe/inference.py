"""The deployable SAFE model: a self-contained folder ("bundle") and the predictor that answers with it.

Bundle layout:
    safe_config.json              architecture, audio-encoder spec, base VL location, token budgets
    safe_trainable.safetensors    audio projector + fusion adapters
    gate/                         the distilled deployment gate (Stage C)
    base_vl/                      the frozen base VL (offline profiles; real checkpoints are referenced by id/path)

Deployed inference is a cascade: the base VL answers first (budget 0 is the base exactly), the gate reads the cheap
state (question embedding, the base answer's confidence, audio statistics) and picks a budget; only when it is above
0 is the audio encoded and the question answered again with audio tokens.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from safe.data.features import audio_stats
from safe.data.media import load_audio, load_image
from safe.io import atomic_dir, write_json_atomic
from safe.models.audio_encoders import build_audio_encoder
from safe.models.base_vl import BaseVLModel
from safe.models.safe_model import CONFIG_FILE, TRAINABLE_FILE, SAFEArchitecture, SAFEModel, read_safe_config
from safe.rl.state_features import build_state, question_features
from safe.training.stage_c import load_gate

GATE_DIR = "gate"
BASE_DIR = "base_vl"


@dataclass
class Prediction:
    answer: str
    budget: int
    gate: float  # the gate's probability that audio is worth consulting, P(budget > 0)
    latency_ms: float
    base_answer: str


def assemble_bundle(out_dir: str | Path, base_vl: str, stage_a_dir: str | Path, gate_dir: str | Path) -> Path:
    """Copy the trained parts (and a locally trained base VL) into one self-contained folder, atomically."""
    config = read_safe_config(stage_a_dir)
    with atomic_dir(out_dir) as tmp:
        shutil.copy2(Path(stage_a_dir) / TRAINABLE_FILE, tmp / TRAINABLE_FILE)
        shutil.copytree(gate_dir, tmp / GATE_DIR)
        if Path(base_vl).is_dir():
            shutil.copytree(base_vl, tmp / BASE_DIR)
            config["base_vl"] = BASE_DIR  # relative: the bundle can move
        else:
            config["base_vl"] = base_vl
        write_json_atomic(tmp / CONFIG_FILE, config)
    return Path(out_dir)


def load_safe_model(model_dir: str | Path, base_vl: str | None = None, with_encoder: bool = True,
                    cache_dir: str | Path | None = None, dtype: str | torch.dtype = "float32",
                    device: str | torch.device = "cpu") -> SAFEModel:
    """Rebuild a SAFEModel from a folder holding safe_config.json + safe_trainable.safetensors.

    `dtype` is the frozen base's (`model.dtype`: bfloat16 for the llava profile); the trainable parts stay float32.
    Everything is placed on `device`."""
    model_dir = Path(model_dir)
    config = read_safe_config(model_dir)
    source = base_vl or config["base_vl"]
    if not Path(source).is_absolute() and (model_dir / source).is_dir():
        source = str(model_dir / source)
    base = BaseVLModel.from_pretrained(source, dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    base.to(device)  # before SAFEModel, which builds the trainable parts on the base's device
    encoder = build_audio_encoder(config["audio_encoder"], cache_dir=cache_dir, seed=config.get("seed", 0)) \
        if with_encoder else None
    if encoder is not None:
        encoder.to(device)
    model = SAFEModel(base, SAFEArchitecture.from_json(config["architecture"]), audio_encoder=encoder)
    model.load_trainable(model_dir)
    model.eval()
    return model


class SAFEPredictor:
    """Answers (image, audio, question) with the deployed cascade: base answer -> gate -> audio if chosen."""

    def __init__(self, model: SAFEModel, gate, max_new_tokens: int = 4):
        self.model = model
        self.gate = gate
        self.max_new_tokens = max_new_tokens

    @classmethod
    def load(cls, bundle_dir: str | Path, cache_dir: str | Path | None = None, dtype: str | torch.dtype = "float32",
             device: str | torch.device = "cpu") -> "SAFEPredictor":
        """The bundle's model (`dtype`, `device` as in `load_safe_model`); the gate stays on the CPU."""
        bundle_dir = Path(bundle_dir)
        if not (bundle_dir / GATE_DIR).is_dir():
            raise FileNotFoundError(f"{bundle_dir} is not a SAFE bundle (missing {GATE_DIR}/)")
        return cls(load_safe_model(bundle_dir, cache_dir=cache_dir, dtype=dtype, device=device),
                   load_gate(bundle_dir / GATE_DIR))

    @torch.no_grad()
    def predict(self, image: str | Path | None, audio: str | Path | None, question: str,
                force_budget: int | None = None) -> Prediction:
        """Answer one question. `force_budget` bypasses the gate (always-audio baselines, probes)."""
        if not question or not question.strip():
            raise ValueError("question is empty")
        img = load_image(Path(image)) if image else None
        wave = load_audio(Path(audio)) if audio else None
        start = time.perf_counter()
        batch = self.model.base.encode([question], [img])
        base_answers, first_logits = self.model.generate_answers(batch, 0, max_new_tokens=self.max_new_tokens,
                                                                 return_first_logits=True)
        has = torch.tensor([wave is not None])
        stats = torch.from_numpy(audio_stats(wave))[None] if wave is not None else torch.zeros(1, 3)
        state = build_state(question_features(self.model.base, batch.input_ids, batch.attention_mask), first_logits,
                            stats, has).cpu()  # the gate is small and lives on the CPU
        gate_value = float(self.gate.audio_probability(state)[0]) if wave is not None else 0.0
        if force_budget is not None:
            budget = force_budget if wave is not None else 0
        else:
            budget = int(self.gate.predict_budget(state)[0]) if wave is not None else 0
        answer = base_answers[0]
        if budget > 0:
            answer = self.model.generate_answers(batch, budget, waveforms=[wave],
                                                 max_new_tokens=self.max_new_tokens)[0]
        latency = (time.perf_counter() - start) * 1000.0
        return Prediction(answer, budget, gate_value, latency, base_answers[0])

    @torch.no_grad()
    def base_latency_ms(self, image: str | Path | None, question: str) -> float:
        """Time of the base VL alone answering (the reference for latency ratios)."""
        img = load_image(Path(image)) if image else None
        start = time.perf_counter()
        batch = self.model.base.encode([question], [img])
        self.model.base.generate_answers(batch, max_new_tokens=self.max_new_tokens)
        return (time.perf_counter() - start) * 1000.0


def gate_budgets(gate, states: np.ndarray | torch.Tensor, has_audio: np.ndarray) -> np.ndarray:
    """Budgets the deployed gate picks for precomputed states; examples without audio always get 0."""
    budgets = gate.predict_budget(torch.as_tensor(states, dtype=torch.float32)).cpu().numpy()
    return np.where(np.asarray(has_audio, dtype=bool), budgets, 0)
