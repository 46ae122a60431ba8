"""The llava profile at real size on one GPU: LLaVA-1.5-7B's architecture (bf16) + CLAP (HTSAT, unfused) + SAFE.

    python benchmarks/bench_llava_gpu.py                      # llava-1.5-7b architecture, random weights, CUDA
    python benchmarks/bench_llava_gpu.py --checkpoint DIR     # a real LLaVA checkpoint folder instead
    python benchmarks/bench_llava_gpu.py --tiny               # the same code path on tiny configs (CPU smoke run)

Without --checkpoint the weights are random (the machines we measure on cannot reach the hub): every number
here is speed or memory, never answer quality. Phases, each printed as one JSON line as soon as it is done:

1. build     the frozen base (bf16), the frozen CLAP audio branch, SAFE's projector and fusion blocks
2. clap      CLAP encoding throughput (clips/s), i.e. extract_features' cost per clip
3. step      one Stage A training step (SAFE forward at mixed budgets, frozen-teacher forward, answer loss +
             retention KL, backward, AdamW) in examples/s and peak GPU memory, without and with activation
             checkpointing of the frozen LM
4. generate  greedy short answers per example at budget 0 (the base) and 12 (all audio tokens)
5. trainer   the real pipeline pieces end to end on a small synthetic set at 336 px: generate_benchmark ->
             extract_features (CLAP) -> StageATrainer (Fisher estimate, steps, retention checks) -> the outcome
             rollout that Stage B and evaluate run -> SAFEPredictor answering one example from its files

A phase that fails prints its error and the others still run. --out writes all the lines to a file.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from safe.config import build_config
from safe.models.audio_encoders import NUM_SEGMENTS, ClapAudioEncoder
from safe.models.base_vl import IMAGE_TOKEN, BaseVLModel, build_processor, build_subword_tokenizer
from safe.models.safe_model import SAFEArchitecture, SAFEModel
from safe.training.losses import answer_loss, answer_positions, retention_kl

QUESTIONS = ["what color is the circle ?", "how many beeps do you hear ?", "what animal do you hear ?",
             "how many shapes are there ?", "is the tone rising or falling ?", "what shape is the red object ?"]
ANSWERS = ["red", "three", "dog", "four", "rising", "square"]


def llava_15_7b_config(tokenizer, tiny: bool):
    """llava-hf/llava-1.5-7b-hf's architecture (CLIP ViT-L/14-336 + Vicuna-7B); `tiny` shrinks every size."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    image, patch = (56, 14) if tiny else (336, 14)
    vision = CLIPVisionConfig(
        hidden_size=32 if tiny else 1024, intermediate_size=64 if tiny else 4096,
        num_hidden_layers=2 if tiny else 24, num_attention_heads=4 if tiny else 16, image_size=image,
        patch_size=patch, projection_dim=768, hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=32064, hidden_size=64 if tiny else 4096, intermediate_size=128 if tiny else 11008,
        num_hidden_layers=4 if tiny else 32, num_attention_heads=4 if tiny else 32,
        num_key_value_heads=4 if tiny else 32, max_position_embeddings=4096, rms_norm_eps=1e-5,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(image // patch) ** 2, vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", tie_word_embeddings=False,
    ), image, patch


def clap_config(tiny: bool):
    """laion/clap-htsat-unfused's audio branch (transformers' ClapAudioConfig defaults) or a tiny one."""
    from transformers import ClapAudioConfig, ClapFeatureExtractor

    if not tiny:
        return ClapAudioConfig(), None
    config = ClapAudioConfig(spec_size=64, num_mel_bins=16, window_size=4, patch_size=4, patch_stride=4,
                             patch_embeds_hidden_size=16, hidden_size=32, depths=[1, 1], num_attention_heads=[2, 2],
                             projection_dim=24)
    fe = ClapFeatureExtractor(feature_size=16, sampling_rate=48000, hop_length=480, max_length_s=1,
                              fft_window_size=1024, frequency_max=14000, truncation="rand_trunc")
    return config, fe


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
        self.dtype = torch.bfloat16
        self.lines: list[dict] = []

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def emit(self, phase: str, **values) -> None:
        line = {"phase": phase, **values}
        self.lines.append(line)
        print(json.dumps(line, default=str), flush=True)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.device.type == "cuda" else None

    def run_phase(self, name: str, fn) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - report and go on with the other phases
            self.emit(name, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-2000:])
            self.reset_peak()

    # -- 1. build ---------------------------------------------------------------------------------------------------
    def build(self) -> None:
        from transformers import ClapAudioModelWithProjection, LlavaForConditionalGeneration

        t0 = time.perf_counter()
        if self.args.checkpoint:
            base = BaseVLModel.from_pretrained(self.args.checkpoint, dtype=self.dtype).to(self.device)
            self.image_size = base.processor.image_processor.crop_size["height"]
        else:
            tokenizer = build_subword_tokenizer(QUESTIONS + ANSWERS)
            config, self.image_size, patch = llava_15_7b_config(tokenizer, self.args.tiny)
            torch.manual_seed(0)
            with torch.device(self.device):
                llava = LlavaForConditionalGeneration._from_config(config, dtype=self.dtype)
            base = BaseVLModel(llava, build_processor(tokenizer, self.image_size, patch), source="llava-1.5-7b-arch")
        clap_cfg, fe = clap_config(self.args.tiny)
        with torch.device(self.device):
            clap = ClapAudioModelWithProjection(clap_cfg)
        self.encoder = ClapAudioEncoder(clap, fe or ClapAudioEncoder.default_feature_extractor(clap_cfg),
                                        spec="clap-htsat-unfused-arch")
        cfg = build_config({"profile": "llava"}).model
        if self.args.tiny:
            cfg = build_config({"profile": "llava", "model": {"fusion_heads": 4, "projector_hidden": 64}}).model
        self.model_cfg = cfg
        self.base = base
        torch.manual_seed(1)
        self.model = SAFEModel(base, SAFEArchitecture.from_config(cfg, self.encoder.embed_dim))
        self.sync()
        summary = self.model.trainable_summary()
        self.emit("build", seconds=round(time.perf_counter() - t0, 1), device=str(self.device),
                  gpu=torch.cuda.get_device_name() if self.device.type == "cuda" else None,
                  base_params=sum(p.numel() for p in base.parameters()),
                  clap_params=sum(p.numel() for p in clap.parameters()), image_size=self.image_size,
                  fusion_layers=self.model.fusion_layer_ids, **summary, weights_gib=self.peak_gib())

    # -- 2. CLAP ------------------------------------------------------------------------------------------------------
    def clap(self) -> None:
        rng = np.random.default_rng(0)
        clips = [rng.standard_normal(16000 * 10).astype(np.float32) * 0.1 for _ in range(self.args.clap_batch)]
        with torch.no_grad():
            self.encoder.encode(clips[:2])  # warm-up
            self.sync()
            t0 = time.perf_counter()
            for _ in range(self.args.repeats):
                pooled = self.encoder.encode(clips).pooled
            self.sync()
        seconds = (time.perf_counter() - t0) / self.args.repeats
        self.emit("clap", batch=len(clips), clip_seconds=10, clips_per_s=round(len(clips) / seconds, 1),
                  embed_dim=int(pooled.shape[-1]))

    # -- 3. Stage A step ----------------------------------------------------------------------------------------------
    def batch(self, n: int):
        rng = np.random.default_rng(n)
        images = [Image.fromarray(rng.integers(0, 255, (self.image_size, self.image_size, 3), dtype=np.uint8))
                  for _ in range(n)]
        pick = [i % len(QUESTIONS) for i in range(n)]
        vl = self.base.encode([QUESTIONS[i] for i in pick], images, answers=[ANSWERS[i] for i in pick]).to(self.device)
        needs = torch.tensor([i % 2 == 0 for i in range(n)], device=self.device)  # half audio-dependent, as Stage A
        budgets = torch.tensor([[12, 4, 8, 0][i % 4] for i in range(n)])  # every budget, one in four rows base-only
        feats = torch.randn(n, NUM_SEGMENTS, self.encoder.embed_dim, device=self.device)  # (n, S, D) segments
        return vl, needs, budgets, feats

    def stage_a_step(self, vl, needs, budgets, feats, optimizer) -> dict[str, float]:
        """What StageATrainer._loss + its optimiser step do, on one process. Returns the GPU memory (GiB) held
        after the forward (weights, optimiser state and the activations kept for backward) and the peak of each part."""
        memory = {}

        def mark(part: str) -> None:
            if self.device.type == "cuda":
                memory[f"{part}_peak_gib"] = self.peak_gib()
                torch.cuda.reset_peak_memory_stats()

        logits = self.model(vl, budgets, audio_features=feats)  # (B, T, V)
        with torch.no_grad():
            teacher = self.model(vl, 0)  # budget 0 == the frozen base
        task_labels = vl.labels.masked_fill(~needs.unsqueeze(1), -100)
        vl_positions = answer_positions(vl.labels) & (~needs).unsqueeze(1)
        task = answer_loss(logits, task_labels, answer_positions(task_labels).sum().clamp(min=1))
        kl = retention_kl(logits, teacher, vl_positions, vl_positions.sum().clamp(min=1))
        if self.device.type == "cuda":
            memory["after_forward_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
        mark("forward")
        (task + kl).backward()
        mark("backward")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mark("optimizer")
        return memory

    def step(self) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        for checkpointing in (False, True):
            if checkpointing:
                self.base.enable_activation_checkpointing()
            for n in self.args.batch_sizes:
                vl, needs, budgets, feats = self.batch(n)
                self.reset_peak()
                try:
                    self.stage_a_step(vl, needs, budgets, feats, optimizer)  # warm-up (and optimiser state)
                    self.sync()
                    t0 = time.perf_counter()
                    for _ in range(self.args.repeats):
                        self.stage_a_step(vl, needs, budgets, feats, optimizer)
                    self.sync()
                    seconds = (time.perf_counter() - t0) / self.args.repeats
                    memory = self.stage_a_step(vl, needs, budgets, feats, optimizer)  # untimed: memory by part
                except torch.OutOfMemoryError:
                    optimizer.zero_grad(set_to_none=True)
                    self.emit("step", checkpointing=checkpointing, batch=n, error="out of memory")
                    self.reset_peak()
                    continue
                self.emit("step", checkpointing=checkpointing, batch=n, seq_len=int(vl.input_ids.shape[1]),
                          step_s=round(seconds, 3), examples_per_s=round(n / seconds, 2),
                          peak_gib=max((v for k, v in memory.items() if k.endswith("_peak_gib")), default=None),
                          **memory)

    # -- 4. generation --------------------------------------------------------------------------------------------
    def generate(self) -> None:
        n = self.args.batch_sizes[0]
        vl, _, _, feats = self.batch(n)
        for budget in (0, 12):
            self.model.generate_answers(vl, budget, audio_features=feats, max_new_tokens=4)  # warm-up
            self.sync()
            t0 = time.perf_counter()
            for _ in range(self.args.repeats):
                self.model.generate_answers(vl, budget, audio_features=feats, max_new_tokens=4)
            self.sync()
            seconds = (time.perf_counter() - t0) / self.args.repeats
            self.emit("generate", budget=budget, batch=n, max_new_tokens=4, ms_per_example=round(1000 * seconds / n, 2))

    # -- 5. the real trainer ---------------------------------------------------------------------------------------
    def trainer(self) -> None:
        from torch.utils.data import DataLoader

        from safe.data.datasets import BalancedBatchSampler, LlavaCollator, ManifestDataset
        from safe.data.features import extract_features
        from safe.data.manifest import read_manifest
        from safe.data.media import load_audio
        from safe.data.synth import generate_benchmark
        from safe.inference import SAFEPredictor
        from safe.training.rollout import rollout
        from safe.training.stage_a import StageATrainer
        from safe.models.budget_gate import BudgetGate

        steps, batch_size = self.args.trainer_steps, self.args.batch_sizes[0]
        cfg = build_config({"profile": "llava", "stage_a": {
            "steps": steps, "batch_size": batch_size, "eval_every": max(1, steps // 2), "fisher_batches": 1}})
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            manifest_path = generate_benchmark(Path(tmp) / "data", {"train": 48, "val": 16, "test": 0},
                                               image_size=self.image_size, clip_seconds=2.0, speech=False,
                                               progress=False)
            manifest = read_manifest(manifest_path)
            t1 = time.perf_counter()
            store, report = extract_features(manifest, self.encoder, partial(load_audio, max_seconds=30.0),
                                             Path(tmp) / "features", progress=False)
            t2 = time.perf_counter()
            train = ManifestDataset(manifest, "train", features=store)
            val = ManifestDataset(manifest, "val", features=store)
            sampler = BalancedBatchSampler([r.needs_audio for r in train.records], batch_size,
                                           cfg.stage_a.audio_ratio, num_batches=steps, seed=0)
            collate = partial(LlavaCollator, self.base, store.embed_dim)
            trainer = StageATrainer(self.model, DataLoader(train, batch_sampler=sampler, collate_fn=collate(True)),
                                    DataLoader(val, batch_size=batch_size, collate_fn=collate(False)), cfg.stage_a,
                                    checkpoint_dir=Path(tmp) / "ckpt", progress=False)
            self.reset_peak()
            state = trainer.train()
            self.sync()
            t3 = time.perf_counter()
            outcomes = rollout(self.model, DataLoader(val, batch_size=batch_size, collate_fn=collate(False)),
                               progress=False).table()
            t4 = time.perf_counter()
            record = next(r for r in manifest.by_split("val") if r.audio and r.image)
            self.model.audio_encoder = self.encoder  # the predictor encodes the raw clip
            gate = BudgetGate(outcomes.state_dim, self.model.token_budgets, hidden_dim=16)
            prediction = SAFEPredictor(self.model, gate).predict(manifest.resolve(record.image),
                                                                 manifest.resolve(record.audio), record.question,
                                                                 force_budget=12)
        self.emit("trainer", synth_s=round(t1 - t0, 1), extract_s=round(t2 - t1, 1), clips=report.encoded,
                  train_s=round(t3 - t2, 1), steps=state.step, evaluations=sum("retention_drop" in h for h in state.history),
                  rollbacks=state.rollbacks, checkpointing=self.base.activation_checkpointing, peak_gib=self.peak_gib(),
                  rollout_s=round(t4 - t3, 1), rollout_rows=len(outcomes.states), predict_budget=prediction.budget,
                  predict_ms=round(prediction.latency_ms, 1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a LLaVA checkpoint folder (default: llava-1.5-7b's architecture, random)")
    parser.add_argument("--tiny", action="store_true", help="tiny configs of the same classes (CPU smoke run)")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is there")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--clap-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trainer-steps", type=int, default=6)
    parser.add_argument("--phases", nargs="+", default=["clap", "step", "generate", "trainer"])
    parser.add_argument("--out", type=Path, help="write every JSON line here too")
    args = parser.parse_args(argv)
    bench = Bench(args)
    bench.run_phase("build", bench.build)
    if not any(line["phase"] == "build" and "error" not in line for line in bench.lines):
        raise SystemExit("build failed; nothing else to measure")
    for phase in args.phases:
        bench.run_phase(phase, getattr(bench, phase))
    if args.out:
        args.out.write_text("".join(json.dumps(line, default=str) + "\n" for line in bench.lines))


if __name__ == "__main__":
    main()
