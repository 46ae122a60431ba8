"""How much temporal detail each budget's features hold: a linear probe on the first k segment summaries.

Renders clips with the synthetic generator's own functions (which of two sounds came first; how many beeps; which of
8 or 12 back-to-back sounds plays at one position; which animal calls once among 11 synthetic sounds), encodes
them with the frozen encoder, and fits a multinomial logistic regression (seeded, full batch) on the training share of
each view: the pooled vector, and the first 4 / 8 / 12 coarse-to-fine segment summaries (what budgets 4 / 8 / 12
see). Prints held-out accuracy per task and view. This measures what the features carry, not what Stage A learns.

    python benchmarks/bench_segment_probe.py                     # whisper-tiny.en (offline wheel), 1200 clips a task
    python benchmarks/bench_segment_probe.py --encoder whisper-random:64x2 --clips 400
    python benchmarks/bench_segment_probe.py --tasks seq8_pos3 seq12_pos5   # the n-th of k sounds
    python benchmarks/bench_segment_probe.py --tasks event12                # one short animal call among tones
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from safe.data import synth
from safe.models.audio_encoders import build_audio_encoder
from safe.provenance import provenance


TASKS = ("order", "beep_count", "seq8_pos3", "seq8_pos6", "seq12_pos1", "seq12_pos2", "seq12_pos5", "seq12_pos10",
         "event12")
SYNTHETIC = ("beep", "hum", "whistle")
ANIMALS = tuple(s for s in synth.ORDER_SOUNDS if s not in SYNTHETIC)


def num_classes(task: str) -> int:
    return {"beep_count": 4, "event12": len(ANIMALS)}.get(task, len(synth.ORDER_SOUNDS))


def event_clip(rng: np.random.Generator, n_samples: int, slots: int = 12) -> tuple[np.ndarray, int]:
    """One animal call in a random twelfth of the clip, a synthetic sound in every other -> (wave, animal index):
    a short event that only finer segments isolate."""
    target, where = int(rng.integers(len(ANIMALS))), int(rng.integers(slots))
    names = [ANIMALS[target] if i == where else SYNTHETIC[int(rng.integers(len(SYNTHETIC)))] for i in range(slots)]
    kinds = np.array([synth.ORDER_SOUNDS.index(name) for name in names])
    wave, _ = synth.sequence_clip(rng, slots, n_samples, kinds)
    return wave, target


def clips(task: str, n: int, seed: int, n_samples: int) -> tuple[list[np.ndarray], np.ndarray]:
    """n clips of `task` and their labels (the first sound's index; the beep count minus one; `seqK_posP`: the
    index of the P-th of K sounds)."""
    waves, labels = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        if task == "event12":
            wave, label = event_clip(rng, n_samples)
        elif task.startswith("seq"):
            k, position = (int(v) for v in task[3:].split("_pos"))
            wave, kinds = synth.sequence_clip(rng, k, n_samples)
            label = int(kinds[position - 1])
        elif task == "order":
            a, b = rng.choice(len(synth.ORDER_SOUNDS), size=2, replace=False)
            wave, _ = synth.order_clip(rng, synth.ORDER_SOUNDS[int(a)], synth.ORDER_SOUNDS[int(b)], n_samples)
            label = int(a)
        else:
            count = int(rng.integers(1, 5))
            wave, label = synth.beeps_clip(rng, count, n_samples), count - 1
        waves.append(wave)
        labels.append(label)
    return waves, np.array(labels)


def probe(x: torch.Tensor, y: torch.Tensor, train: int, classes: int, steps: int = 300) -> float:
    """Held-out accuracy of a linear classifier fitted on the first `train` rows of x (N, F) (standardised)."""
    mean, std = x[:train].mean(0), x[:train].std(0).clamp(min=1e-6)
    x = (x - mean) / std
    torch.manual_seed(0)
    linear = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x[:train]), y[:train]) + 1e-3 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float((linear(x[train:]).argmax(1) == y[train:]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="whisper-tiny.en")
    parser.add_argument("--clips", type=int, default=1200, help="clips per task")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args()
    cache = Path(os.environ.get("SAFE_CACHE_DIR", ".safe_cache")) / "encoders"
    encoder = build_audio_encoder(args.encoder, cache_dir=cache)
    train = int(args.clips * 0.7)
    table = {}
    for task in args.tasks:
        classes = num_classes(task)
        waves, labels = clips(task, args.clips, seed=1, n_samples=int(args.seconds * synth.SR))
        pooled, segments = [], []
        for start in range(0, len(waves), 32):
            out = encoder.encode(waves[start:start + 32])
            pooled.append(out.pooled.float())
            segments.append(out.segments.float())
        pooled_t, segments_t = torch.cat(pooled), torch.cat(segments)  # (N, D), (N, 12, D)
        y = torch.from_numpy(labels)
        views = {"pooled": pooled_t, **{f"first_{k}": segments_t[:, :k].flatten(1) for k in (4, 8, 12)}}
        table[task] = {name: round(probe(x, y, train, classes), 4) for name, x in views.items()}
        print(f"{task:<11} n_test={args.clips - train:<5} " + "  ".join(f"{k} {v:.3f}" for k, v in table[task].items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"encoder": args.encoder, "clips": args.clips, "seconds": args.seconds,
                                              "probe": table, **provenance()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
