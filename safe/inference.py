"""The deployable SAFE model: a self-contained folder ("bundle") and the predictor that answers with it.

Bundle layout:
    safe_config.json              architecture, audio-encoder spec, base VL location, token budgets
    safe_trainable.safetensors    audio projector + fusion adapters
    gate/                         the distilled deployment gate (Stage C)
    base_vl/                      the frozen base VL (offline profiles; real checkpoints are referenced by id/path)

Deployed inference is a cascade: the base VL answers first (budget 0 is the base exactly), the gate reads the cheap
state (question embedding, the base answer's confidence, audio statistics) and picks a budget; only when it is above
0 is the audio encoded and the question answered again with audio tokens.

`check_bundle` and `check_question` read only JSON and file headers (no torch), so a command can refuse a broken
folder or an over-long question in milliseconds, before the model loads; torch and transformers are imported only
when a model is built.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safe.io import atomic_dir, write_json_atomic

if TYPE_CHECKING:
    import numpy as np
    import torch

    from safe.models.safe_model import SAFEModel

GATE_DIR = "gate"
BASE_DIR = "base_vl"
# The file names of safe.models.safe_model and safe.models.policy, repeated so the checks need not import torch.
SAFE_CONFIG_FILE = "safe_config.json"
SAFE_TRAINABLE_FILE = "safe_trainable.safetensors"
LORA_DIR = "fusion_lora"  # safe.models.safe_model.LORA_DIR (not imported: this module checks bundles without torch)
LORA_FILES = ("adapter_config.json", "adapter_model.safetensors")
GATE_FILES = ("config.json", "model.safetensors")
DEFAULT_MAX_AUDIO_SECONDS = 30.0
"""Clips are cropped to this while decoding (the pipeline's `data.max_audio_seconds` default)."""
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class BundleError(ValueError):
    """A model folder is not a loadable SAFE bundle; the message names the file and what is wrong."""

    fix = "point --model at the deployable bundle (data/models/safe after `dvc repro`), or use 'champion'"


class QuestionError(ValueError):
    """A question the model cannot read: empty, or longer than its context."""

    fix = "shorten the question"


@dataclass
class Prediction:
    answer: str
    budget: int
    gate: float  # the gate's probability that audio is worth consulting, P(budget > 0)
    latency_ms: float
    base_answer: str


# ---------------------------------------------------------------- checks that need no model


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise BundleError(f"{path}: missing ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise BundleError(f"{path}: not UTF-8 text ({what} should be JSON)") from None
    except json.JSONDecodeError as err:
        raise BundleError(f"{path}: invalid JSON at line {err.lineno} column {err.colno} ({err.msg}); "
                          f"it should hold the {what}") from None


def check_safetensors(path: Path) -> None:
    """Raise BundleError when a .safetensors file is missing, truncated or corrupt (header vs file size)."""
    if not path.is_file():
        raise BundleError(f"{path}: missing (model weights)")
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > min(size - 8, _MAX_SAFETENSORS_HEADER):
            raise BundleError(f"{path}: not a safetensors file or truncated ({size} bytes; the header is unreadable)")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
    if not isinstance(header, dict):
        raise BundleError(f"{path}: corrupt safetensors file (its header is not a JSON object)")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise BundleError(f"{path}: corrupt safetensors file (tensor entries without data_offsets)") from None
    if 8 + n + end != size:
        raise BundleError(f"{path}: truncated or corrupt safetensors file ({size} bytes; its header describes "
                          f"{8 + n + end})")


def _base_folder(bundle: Path, config: dict) -> Path | None:
    """The base VL folder the bundle uses, or None for a hub id."""
    source = config.get("base_vl")
    if not isinstance(source, str) or not source.strip():
        raise BundleError(f"{bundle / SAFE_CONFIG_FILE}: key 'base_vl' must name the base VL folder or hub id, "
                          f"got {source!r}")
    path = Path(source)
    if not path.is_absolute() and (bundle / path).exists():
        return bundle / path
    if path.is_absolute() or source.startswith("."):
        if not path.is_dir():
            raise BundleError(f"{bundle / SAFE_CONFIG_FILE}: base_vl {source!r} is not a folder")
        return path
    return None


def check_bundle(folder: str | Path) -> dict:
    """Every file a SAFE bundle needs, present and well-formed (JSON parses, safetensors sizes match); returns
    safe_config.json. Reads headers only: milliseconds, and no torch import."""
    bundle = Path(folder)
    if not bundle.exists():
        raise BundleError(f"{bundle}: model folder not found")
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: not a folder (a SAFE bundle is a folder holding {SAFE_CONFIG_FILE})")
    config = _read_json(bundle / SAFE_CONFIG_FILE, "SAFE configuration")
    if not isinstance(config, dict):
        raise BundleError(f"{bundle / SAFE_CONFIG_FILE}: expected a JSON object, got {type(config).__name__}")
    for key, kind in (("architecture", dict), ("audio_encoder", str), ("base_vl", str)):
        if not isinstance(config.get(key), kind):
            raise BundleError(f"{bundle / SAFE_CONFIG_FILE}: key {key!r} missing or not a "
                              f"{'JSON object' if kind is dict else 'string'}")
    check_safetensors(bundle / SAFE_TRAINABLE_FILE)
    _read_json(bundle / LORA_DIR / LORA_FILES[0], "fusion LoRA adapter configuration (peft)")
    check_safetensors(bundle / LORA_DIR / LORA_FILES[1])
    gate = bundle / GATE_DIR
    if not gate.is_dir():
        raise BundleError(f"{gate}: missing (the deployment gate folder); is {bundle} a Stage A folder rather "
                          f"than the bundle?")
    _read_json(gate / GATE_FILES[0], "gate configuration")
    check_safetensors(gate / GATE_FILES[1])
    base = _base_folder(bundle, config)
    if base is not None:
        _read_json(base / "config.json", "base VL configuration")
        weights = sorted(base.glob("*.safetensors"))
        if not weights and not any(base.glob("*.bin")):
            raise BundleError(f"{base}: no model weights (*.safetensors or *.bin)")
        for path in weights:
            check_safetensors(path)
        for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json"):
            if (base / name).is_file():
                _read_json(base / name, name)
    return config


def _context_length(base: Path) -> int | None:
    config = _read_json(base / "config.json", "base VL configuration")
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    value = text.get("max_position_embeddings")
    return int(value) if isinstance(value, int) and value > 0 else None


def check_question(question: str, bundle: str | Path | None = None, config: dict | None = None) -> None:
    """Refuse an empty question, and (when the bundle's tokenizer is a local file) one longer than the model's
    context, before the model loads. The exact prompt length is checked again in `SAFEPredictor.predict`."""
    if not isinstance(question, str) or not question.strip():
        raise QuestionError("the question is empty")
    if bundle is None:
        return
    base = _base_folder(Path(bundle), config if config is not None else check_bundle(bundle))
    if base is None or not (base / "tokenizer.json").is_file():
        return
    limit = _context_length(base)
    if limit is None:
        return
    from tokenizers import Tokenizer  # light (Rust); transformers is not needed to count

    n = len(Tokenizer.from_file(str(base / "tokenizer.json")).encode(question).ids)
    if n >= limit:
        raise QuestionError(f"the question is {n} tokens ({len(question.split())} words); the model reads at most "
                            f"{limit} tokens, prompt and answer included")


# ---------------------------------------------------------------- the bundle and the model

def assemble_bundle(out_dir: str | Path, base_vl: str, stage_a_dir: str | Path, gate_dir: str | Path) -> Path:
    """Copy the trained parts (and a locally trained base VL) into one self-contained folder, atomically."""
    from safe.models.safe_model import CONFIG_FILE, LORA_DIR, TRAINABLE_FILE, read_safe_config

    config = read_safe_config(stage_a_dir)
    with atomic_dir(out_dir) as tmp:
        shutil.copy2(Path(stage_a_dir) / TRAINABLE_FILE, tmp / TRAINABLE_FILE)
        shutil.copytree(Path(stage_a_dir) / LORA_DIR, tmp / LORA_DIR)
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
    import torch

    from safe.models.audio_encoders import build_audio_encoder
    from safe.models.base_vl import BaseVLModel
    from safe.models.safe_model import SAFEArchitecture, SAFEModel, read_safe_config

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

    def __init__(self, model: SAFEModel, gate, max_new_tokens: int = 4,
                 max_audio_seconds: float | None = DEFAULT_MAX_AUDIO_SECONDS, audio_threshold: float | None = None):
        """`audio_threshold` overrides the gate's saved threshold on P(budget > 0) (the deploy-time knob)."""
        self.model = model
        self.gate = gate
        if audio_threshold is not None:
            from safe.models.budget_gate import check_audio_threshold

            gate.audio_threshold = check_audio_threshold(audio_threshold)
        self.max_new_tokens = max_new_tokens
        self.max_audio_seconds = max_audio_seconds

    @classmethod
    def load(cls, bundle_dir: str | Path, cache_dir: str | Path | None = None, dtype: str | torch.dtype = "float32",
             device: str | torch.device = "cpu", audio_threshold: float | None = None) -> "SAFEPredictor":
        """The bundle's model (`dtype`, `device` as in `load_safe_model`); the gate stays on the CPU.

        The folder is checked first (`check_bundle`): a missing or broken file raises BundleError naming it."""
        from safe.models.budget_gate import load_gate

        bundle_dir = Path(bundle_dir)
        check_bundle(bundle_dir)
        return cls(load_safe_model(bundle_dir, cache_dir=cache_dir, dtype=dtype, device=device),
                   load_gate(bundle_dir / GATE_DIR), audio_threshold=audio_threshold)

    def predict(self, image: str | Path | Any | None, audio: str | Path | np.ndarray | None, question: str,
                force_budget: int | None = None) -> Prediction:
        """Answer one question. `force_budget` bypasses the gate (always-audio baselines, probes).

        `image` and `audio` are file paths, or media already loaded (a PIL image, a float32 16 kHz waveform).
        Audio is cropped to `max_audio_seconds` while it is decoded; a prompt longer than the model's context
        raises QuestionError."""
        import torch

        with torch.no_grad():
            return self._predict(image, audio, question, force_budget)

    def _predict(self, image, audio, question: str, force_budget: int | None) -> Prediction:
        import torch

        from safe.data.features import audio_stats
        from safe.data.media import load_audio, load_image
        from safe.rl.state_features import build_state, question_features

        check_question(question)
        img, wave = image, audio
        if isinstance(image, (str, Path)):
            img = load_image(Path(image)) if str(image) else None
        if isinstance(audio, (str, Path)):
            wave = load_audio(Path(audio), max_seconds=self.max_audio_seconds) if str(audio) else None
        start = time.perf_counter()
        batch = self.model.base.encode([question], [img])
        self._check_context(batch.input_ids.shape[1])
        with self.model.recording_prefix() as recorder:
            base_answers, first_logits = self.model.generate_answers(batch, 0, max_new_tokens=self.max_new_tokens,
                                                                     return_first_logits=True)
        has = torch.tensor([wave is not None])
        stats = torch.from_numpy(audio_stats(wave))[None] if wave is not None else torch.zeros(1, 3)
        state = build_state(question_features(self.model.base, batch.input_ids, batch.attention_mask), first_logits,
                            stats, has).cpu()  # the gate is small and lives on the CPU
        choice = self.gate.decide(state) if wave is not None else None  # one gate pass: P(audio) and its budget
        gate_value = float(choice["p_audio"][0]) if choice is not None else 0.0
        if force_budget is not None:
            budget = force_budget if wave is not None else 0
        else:
            budget = int(choice["budget"][0]) if choice is not None else 0
        answer = base_answers[0]
        if budget > 0:  # from the base pass's prompt prefix: only the layers from the first fusion block run again
            with self.model.reusing_prefix(recorder.prefix):
                answer = self.model.generate_answers(batch, budget, waveforms=[wave],
                                                     max_new_tokens=self.max_new_tokens)[0]
        latency = (time.perf_counter() - start) * 1000.0
        return Prediction(answer, budget, gate_value, latency, base_answers[0])

    def _check_context(self, prompt_tokens: int) -> None:
        text_config = getattr(self.model.base.llava.config, "text_config", None)
        limit = getattr(text_config, "max_position_embeddings", None)
        if isinstance(limit, int) and prompt_tokens + self.max_new_tokens > limit:
            raise QuestionError(f"the prompt is {prompt_tokens} tokens with the image; the model reads at most "
                                f"{limit} tokens, prompt and {self.max_new_tokens} answer tokens included")

    def base_latency_ms(self, image: str | Path | None, question: str) -> float:
        """Time of the base VL alone answering (the reference for latency ratios)."""
        import torch

        from safe.data.media import load_image

        img = load_image(Path(image)) if image else None
        with torch.no_grad():
            start = time.perf_counter()
            batch = self.model.base.encode([question], [img])
            self.model.base.generate_answers(batch, max_new_tokens=self.max_new_tokens)
            return (time.perf_counter() - start) * 1000.0


def gate_budgets(gate, states: np.ndarray | torch.Tensor, has_audio: np.ndarray) -> np.ndarray:
    """Budgets the deployed gate picks for precomputed states; examples without audio always get 0."""
    return gate_choices(gate, states, has_audio)["budget"]


def gate_choices(gate, states: np.ndarray | torch.Tensor, has_audio: np.ndarray) -> dict[str, np.ndarray]:
    """The deployed gate on precomputed states (N, S), each (N,): `budget` it picks, `p_audio` = P(budget > 0) and
    `audio_budget`, the budget it picks wherever it consults audio (so any threshold's choice follows from
    `p_audio >= threshold`); examples without audio get 0 in all three."""
    import numpy as np
    import torch

    has = np.asarray(has_audio, dtype=bool)
    choice = gate.decide(torch.as_tensor(states, dtype=torch.float32))
    return {k: np.where(has, v.cpu().numpy(), 0) for k, v in choice.items()}
