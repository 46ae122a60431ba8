"""SAFEModel = frozen base VL + frozen audio encoder + trainable audio projector + LoRA cross-attention fusion.

Fusion blocks are attached with forward hooks after chosen decoder layers instead of replacing them, so the base
model's modules and state-dict keys stay exactly as loaded. Each example carries a token budget in the configured
set (default 0/4/8/12): budget 0 is the base model bit for bit and never runs the audio encoder.
Only the trained parts are saved, with the config that rebuilds the rest: the projector and the fusion blocks' norms,
gates and frozen projections in safe_trainable.safetensors, the fusion blocks' LoRA weights as a peft adapter
(`fusion_lora/`: adapter_config.json + adapter_model.safetensors).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from peft import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from safe.io import atomic_write
from safe.models.base_vl import BaseVLModel, VLBatch
from safe.models.fusion_adapter import ADAPTER_NAME, CrossAttentionBlock, floor_gate, is_frozen_base_weight, lora_config
from safe.models.prompt_prefix import PrefixRecorder, PromptPrefix, recording, replaying
from safe.models.projectors import AudioProjector

TRAINABLE_FILE = "safe_trainable.safetensors"
CONFIG_FILE = "safe_config.json"
LORA_DIR = "fusion_lora"
LORA_FILES = ("adapter_config.json", "adapter_model.safetensors")
FUSION_INITS = ("random", "host")
GATE_READS = ("first", "fused", "words")
PLACE_AND_WORDS = ("place_keys", "question_query.weight", "words_norm.weight", "words_norm.bias")


@dataclass(frozen=True)
class SAFEArchitecture:
    """What rebuilds a SAFE model around a given base VL and audio encoder."""

    audio_embed_dim: int
    token_budgets: tuple[int, ...] = (0, 4, 8, 12)
    fusion_layers: tuple[int, ...] = (-1,)
    fusion_heads: int = 4
    lora_rank: int = 8
    projector_hidden: int = 256
    fusion_init: str = "random"
    """Frozen q/k/v of each fusion block: `random` (seeded) or `host` (the decoder layer's own attention weights)."""
    gate_floor: float = 0.0
    """Learned gates below it act as 0 (`floor_gate`); 0: every gate acts as it is."""
    gate_reads: str = "first"
    """Which states each block's gate reads the question from: `words`, the LM's input embeddings of the prompt, one
    word at a time without the sentence around it; `first`, the first fusion layer's, which no clip has reached yet,
    so the question alone decides every gate; `fused`, its own layer's, where earlier blocks' audio can open it
    (bundles saved before this field existed)."""

    def __post_init__(self) -> None:
        if self.fusion_init not in FUSION_INITS:
            raise ValueError(f"fusion_init must be one of {FUSION_INITS}, got {self.fusion_init!r}")
        if self.gate_reads not in GATE_READS:
            raise ValueError(f"gate_reads must be one of {GATE_READS}, got {self.gate_reads!r}")
        if not 0.0 <= self.gate_floor < 1.0:
            raise ValueError(f"gate_floor must be in [0, 1), got {self.gate_floor}")

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_config(cls, cfg, audio_embed_dim: int) -> "SAFEArchitecture":
        """From a `safe.config.ModelConfig`."""
        return cls(audio_embed_dim, tuple(cfg.token_budgets), tuple(cfg.fusion_layers), cfg.fusion_heads,
                   cfg.lora_rank, cfg.projector_hidden, cfg.fusion_init, cfg.fusion_gate_floor,
                   cfg.fusion_gate_reads)

    @classmethod
    def from_json(cls, data: dict) -> "SAFEArchitecture":
        data = dict(data)
        data["token_budgets"] = tuple(data["token_budgets"])
        data["fusion_layers"] = tuple(data["fusion_layers"])
        data.setdefault("fusion_init", "random")
        data.setdefault("gate_floor", 0.0)
        data.setdefault("gate_reads", "fused")  # how bundles saved before the field was added were trained
        return cls(**data)


@dataclass
class _FusionContext:
    tokens: torch.Tensor  # (B, K, D)
    mask: torch.Tensor  # (B, K) bool
    gate: float | torch.Tensor | None
    text_mask: torch.Tensor  # (B, T_prompt) bool: the prompt's text tokens (no padding, image or answer tokens)
    questions: dict[str, torch.Tensor] = field(default_factory=dict)  # block -> (B, D) summary of the prompt
    gates: dict[str, torch.Tensor] = field(default_factory=dict)  # block -> (B,) learned gate of the last pass
    first: torch.Tensor | None = None  # (B, T_prompt, D) the first fusion layer's prompt states, before any audio
    embeddings: torch.Tensor | None = None  # (B, T, D) the LM's input embeddings on the pass holding the prompt
    words: torch.Tensor | None = None  # (B, D) their mean over the prompt's text tokens

    def read_words(self, embeddings: torch.Tensor) -> None:
        """Keep the prompt's input embeddings (B, T, D) and their mean over its text tokens, on the pass that holds
        the prompt; generation's later steps (new tokens only) keep the prompt's."""
        T, T_prompt = embeddings.shape[1], self.text_mask.shape[1]
        if T >= T_prompt:
            mask = nn.functional.pad(self.text_mask, (0, T - T_prompt), value=False).to(embeddings.device)
            m = mask.unsqueeze(-1).to(embeddings.dtype)
            self.embeddings = embeddings
            self.words = (embeddings.float() * m).sum(1) / m.sum(1).clamp(min=1.0)

    def question(self, key: str, block: CrossAttentionBlock, hidden: torch.Tensor) -> torch.Tensor:
        """The block's question summary (B, D): computed from the pass that holds the whole prompt (a training
        forward, or generation's first step), then reused by generation's later steps, which see only new tokens."""
        T, T_prompt = hidden.shape[1], self.text_mask.shape[1]
        if T >= T_prompt:  # the prompt, maybe followed by answer tokens (never part of the summary)
            mask = nn.functional.pad(self.text_mask, (0, T - T_prompt), value=False)
            self.questions[key] = block.question_summary(hidden, mask)
        elif key not in self.questions:
            raise RuntimeError(f"{key}: a {T}-token step came before the {T_prompt}-token prompt")
        return self.questions[key]


class SAFEModel(nn.Module):
    def __init__(self, base: BaseVLModel, arch: SAFEArchitecture, audio_encoder: nn.Module | None = None):
        super().__init__()
        self.base = base
        self.arch = arch
        self.audio_encoder = audio_encoder
        if audio_encoder is not None and getattr(audio_encoder, "embed_dim", arch.audio_embed_dim) != arch.audio_embed_dim:
            raise ValueError(
                f"audio encoder embed_dim {audio_encoder.embed_dim} != architecture audio_embed_dim {arch.audio_embed_dim}"
            )
        if audio_encoder is not None:  # frozen by contract, whatever encoder is passed in
            for param in audio_encoder.parameters():
                param.requires_grad_(False)
            audio_encoder.eval()
        self.token_budgets = tuple(arch.token_budgets)
        D = base.hidden_size
        self.projector = AudioProjector(arch.audio_embed_dim, D, max(self.token_budgets), hidden_dim=arch.projector_hidden)
        n_layers = len(base.decoder_layers)
        self.fusion_layer_ids = sorted({i % n_layers for i in arch.fusion_layers})
        host = lambda i: base.decoder_layers[i].self_attn if arch.fusion_init == "host" else None  # noqa: E731
        self.fusion = nn.ModuleDict({
            f"layer_{i}": CrossAttentionBlock(D, arch.fusion_heads, rank=arch.lora_rank, init_from=host(i),
                                              max_tokens=max(self.token_budgets))
            for i in self.fusion_layer_ids
        })
        self.fusion.peft_config = {ADAPTER_NAME: lora_config(arch.lora_rank)}  # peft's state-dict helpers read it
        self._context: _FusionContext | None = None
        self._floor_on = True
        for i in self.fusion_layer_ids:
            base.decoder_layers[i].register_forward_hook(self._make_hook(f"layer_{i}"))
        base.decoder_layers[0].register_forward_pre_hook(self._read_words, with_kwargs=True)
        # Trainable parts stay float32 whatever the base dtype; the hook casts at the boundary.
        self.projector.to(base.device)
        self.fusion.to(base.device)

    # -- hooks ----------------------------------------------------------------------------------------------------
    def _read_words(self, _module, args, kwargs):
        """Pre-hook on decoder layer 0: its input is the prompt's embeddings (the question query and `words` gates)."""
        if self._context is not None:
            self._context.read_words(args[0] if args else kwargs["hidden_states"])

    def _make_hook(self, key: str):
        def hook(_module, _args, output):
            ctx = self._context
            if ctx is None:
                return output
            raw = output[0] if isinstance(output, tuple) else output  # (B, T, D)
            block, hidden = self.fusion[key], raw.float()
            gate = ctx.gate
            if gate is None:  # the learned gate, read from the question (kept unfloored for Stage A's gate loss)
                gate = ctx.gates[key] = block.example_gate(ctx.question(key, block, self._gate_states(ctx, key, hidden))
                                                           ).view(-1)  # (B,)
                gate = floor_gate(gate, self.arch.gate_floor if self._floor_on else 0.0)
            fused = block(hidden, ctx.tokens.float(), ctx.mask, gate, words=ctx.words).to(raw.dtype)
            return (fused, *output[1:]) if isinstance(output, tuple) else fused

        return hook

    def _gate_states(self, ctx: _FusionContext, key: str, hidden: torch.Tensor) -> torch.Tensor:
        """The hidden states (B, T, D) block `key`'s gate reads the question from (`SAFEArchitecture.gate_reads`).
        Only a pass holding the whole prompt reads them; generation's later steps reuse the prompt's gate."""
        if self.arch.gate_reads == "fused" or hidden.shape[1] < ctx.text_mask.shape[1]:
            return hidden
        if self.arch.gate_reads == "words":  # a word the LM has never seen in this order cannot look like audio
            return ctx.embeddings.to(hidden.dtype)
        if key == f"layer_{self.fusion_layer_ids[0]}":  # the base's states: no block has run yet
            ctx.first = hidden
        return ctx.first

    @contextlib.contextmanager
    def gates_unfloored(self) -> Iterator[None]:
        """Every learned gate acts as it is, below the floor too: what the adapter would do to an answer whose gate
        opened. Stage A's Fisher is read this way; with the floor, a shut VL-only row has no gradient at all."""
        self._floor_on = False
        try:
            yield
        finally:
            self._floor_on = True

    @contextlib.contextmanager
    def _fused(self, ctx: _FusionContext | None) -> Iterator[None]:
        self._context = ctx
        try:
            yield
        finally:
            self._context = None

    @contextlib.contextmanager
    def recording_attention(self) -> Iterator[list[torch.Tensor]]:
        """The fusion attention of the passes inside, one (B, H, T, K) tensor per block and pass (with gradient):
        `with model.recording_attention() as weights: model(...)`. Stage A's grounding loss reads them."""
        weights: list[torch.Tensor] = []
        for block in self.fusion.values():
            block.attention_sink = weights
        try:
            yield weights
        finally:
            for block in self.fusion.values():
                block.attention_sink = None

    # -- prompt prefixes -------------------------------------------------------------------------------------------
    def recording_prefix(self) -> contextlib.AbstractContextManager[PrefixRecorder]:
        """Keep what the next pass computes below the first fusion layer, the same at every budget (`PromptPrefix`):
        `with model.recording_prefix() as rec: ...`, then `rec.prefix`."""
        return recording(self.base.decoder_layers, self.fusion_layer_ids[0])

    def reusing_prefix(self, prefix: PromptPrefix) -> contextlib.AbstractContextManager[None]:
        """Passes inside, over the prompts `prefix` was recorded on (any budget), start at the first fusion layer."""
        if prefix.layer != self.fusion_layer_ids[0]:
            raise ValueError(f"the prefix ends at decoder layer {prefix.layer}, the first fusion layer is "
                             f"{self.fusion_layer_ids[0]}")
        return replaying(self.base.decoder_layers, prefix)

    # -- budgets and audio --------------------------------------------------------------------------------------------
    def check_budgets(self, budgets: int | Sequence[int] | torch.Tensor, batch_size: int) -> torch.Tensor:
        b = torch.as_tensor(budgets, dtype=torch.long).flatten()
        if b.numel() == 1 and batch_size != 1:
            b = b.expand(batch_size)
        if b.numel() != batch_size:
            raise ValueError(f"got {b.numel()} budgets for a batch of {batch_size}")
        bad = sorted({int(x) for x in b.tolist()} - set(self.token_budgets))
        if bad:
            raise ValueError(f"token budget(s) {bad} not in the allowed set {list(self.token_budgets)}")
        return b.to(self.base.device)

    def encode_audio(self, waveforms: Sequence[np.ndarray]) -> torch.Tensor:
        """Coarse-to-fine segment summaries (N, S, D_audio) from raw 16 kHz waveforms, through the frozen encoder:
        what the feature cache holds for the same clips."""
        if self.audio_encoder is None:
            raise RuntimeError("this SAFEModel was built without an audio encoder; pass cached audio_features instead")
        return self.audio_encoder.encode(list(waveforms)).segments.to(self.base.device)

    def _context_for(
        self, batch: VLBatch, budgets: torch.Tensor, audio_features: torch.Tensor | None,
        waveforms: Sequence[np.ndarray | None] | None, gate: float | torch.Tensor | None,
    ) -> _FusionContext | None:
        active = budgets > 0  # (B,)
        if not bool(active.any()):
            return None  # budget 0 everywhere: the base model, audio never touched
        idx = active.nonzero().flatten()
        if audio_features is not None:
            feats = audio_features.to(self.base.device)[idx]  # (N_active, S, D_audio) or pooled (N_active, D_audio)
        elif waveforms is not None:
            missing = [int(i) for i in idx if waveforms[int(i)] is None]
            if missing:
                raise ValueError(f"examples {missing} have a budget > 0 but no audio")
            feats = self.encode_audio([waveforms[int(i)] for i in idx])
        else:
            raise ValueError("a budget > 0 needs audio_features or waveforms")
        B, K = budgets.shape[0], max(self.token_budgets)
        tokens_active = self.projector(feats.to(self.projector.token_scale.dtype))  # (N_active, K, D)
        tokens = tokens_active.new_zeros(B, K, tokens_active.shape[-1]).index_copy(0, idx, tokens_active)  # (B, K, D)
        mask = torch.arange(K, device=budgets.device).unsqueeze(0) < budgets.unsqueeze(1)  # (B, K)
        return _FusionContext(tokens, mask, gate, self.base.prompt_text_mask(batch))

    # -- forward / generate ------------------------------------------------------------------------------------------
    def forward(
        self,
        batch: VLBatch,
        budgets: int | Sequence[int] | torch.Tensor,
        audio_features: torch.Tensor | None = None,
        waveforms: Sequence[np.ndarray | None] | None = None,
        gate: float | torch.Tensor | None = None,
        return_gates: bool = False,
        logits_to_keep: int = 0,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V), or the last `logits_to_keep` positions' (B, n, V). `audio_features` are cached encoder
        outputs, (B, S, D_audio) segment summaries or (B, D_audio) pooled (one segment repeated, `AudioProjector`);
        else `waveforms`. With `return_gates`, also the learned gates (B, n_fusion_blocks) (None when no row has
        audio or the gate is forced)."""
        b = self.check_budgets(budgets, batch.input_ids.shape[0])
        ctx = self._context_for(batch, b, audio_features, waveforms, gate)
        with self._fused(ctx):
            logits = self.base(batch, logits_to_keep)
        if not return_gates:
            return logits
        gates = torch.stack(list(ctx.gates.values()), dim=1) if ctx is not None and ctx.gates else None
        return logits, gates

    @torch.no_grad()
    def generate_answers(
        self, batch: VLBatch, budgets, audio_features=None, waveforms=None, gate=None, max_new_tokens: int = 4,
        return_first_logits: bool = False,
    ):
        b = self.check_budgets(budgets, batch.input_ids.shape[0])
        with self._fused(self._context_for(batch, b, audio_features, waveforms, gate)):
            return self.base.generate_answers(batch, max_new_tokens, return_first_logits)

    # -- parameters ------------------------------------------------------------------------------------------------------
    def fusion_adds_nothing(self) -> bool:
        """True while every fusion block returns its input exactly (a fresh adapter): SAFE's answers are then the
        base's at every budget."""
        return all(block.adds_nothing() for block in self.fusion.values())

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"projector": self.projector, "fusion": self.fusion}

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters Stage A trains (name -> parameter): the projector, and in the fusion blocks the LoRA
        weights, norms and gates; never the frozen projections under the LoRA adapters."""
        return {f"{name}.{k}": p for name, module in self.trainable_modules().items()
                for k, p in module.named_parameters() if not is_frozen_base_weight(k)}

    def trainable_summary(self) -> dict[str, float]:
        trainable = sum(p.numel() for p in self.trainable_parameters().values())
        total = sum(p.numel() for p in self.parameters())
        return {"trainable_params": trainable, "total_params": total, "trainable_fraction": trainable / max(total, 1)}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor of the projector and the fusion blocks (LoRA weights included), on the CPU."""
        out = {}
        for name, module in self.trainable_modules().items():
            out.update({f"{name}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
        return out

    def save_trainable(self, folder: str | Path, extra_config: dict | None = None) -> Path:
        """Write the trained parts and the architecture (json), each file atomically: the LoRA weights as a peft
        adapter in `fusion_lora/`, everything else in safe_trainable.safetensors."""
        folder = Path(folder)
        (folder / LORA_DIR).mkdir(parents=True, exist_ok=True)
        config = {"architecture": self.arch.to_json(), **(extra_config or {})}
        lora = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(
            self.fusion, adapter_name=ADAPTER_NAME).items()}
        rest = {k: v for k, v in self.trainable_state_dict().items() if ".lora_" not in k}
        atomic_write(folder / TRAINABLE_FILE, lambda p: save_file(rest, str(p)))
        atomic_write(folder / LORA_DIR / LORA_FILES[1], lambda p: save_file(lora, str(p), metadata={"format": "pt"}))
        adapter_config = lora_config(self.arch.lora_rank).to_dict()
        adapter_config["target_modules"] = sorted(adapter_config["target_modules"])  # a set: same bytes every run
        atomic_write(folder / LORA_DIR / LORA_FILES[0],
                     lambda p: Path(p).write_text(json.dumps(adapter_config, indent=2, sort_keys=True, default=list)))
        atomic_write(folder / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(config, indent=2, sort_keys=True)))
        return folder

    def load_trainable(self, folder: str | Path) -> None:
        folder = Path(folder)
        path = folder / TRAINABLE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no trained SAFE weights in {folder} (missing {TRAINABLE_FILE})")
        for name in LORA_FILES:
            if not (folder / LORA_DIR / name).is_file():
                raise FileNotFoundError(f"no fusion LoRA adapter in {folder} (missing {LORA_DIR}/{name})")
        state = load_file(str(path))
        for name, module in self.trainable_modules().items():
            prefix = f"{name}."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            missing, unexpected = module.load_state_dict(sub, strict=False)
            # LoRA comes from the peft adapter, below; a bundle saved before place keys and the words' query keeps
            # them at their start values, which compute exactly what that bundle did
            missing = [k for k in missing if ".lora_" not in k and k.split(".", 1)[-1] not in PLACE_AND_WORDS]
            if missing or unexpected:
                raise RuntimeError(f"{path}: {name} weights do not match the architecture "
                                   f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        lora = load_peft_weights(str(folder / LORA_DIR), device=str(self.projector.token_scale.device))
        result = set_peft_model_state_dict(self.fusion, lora, adapter_name=ADAPTER_NAME)
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"{folder / LORA_DIR}: unexpected LoRA weights {result.unexpected_keys[:5]}")


def read_safe_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no SAFE config in {folder} (missing {CONFIG_FILE})")
    return json.loads(path.read_text())
