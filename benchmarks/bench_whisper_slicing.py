"""Whisper encoder cost for a short clip: sliced to the clip vs padded to Whisper's 30 s window.

Usage: HF_HUB_OFFLINE=1 python benchmarks/bench_whisper_slicing.py [--spec whisper-tiny.en] [--seconds 2] [--runs 10]

"sliced" is WhisperAudioEncoder.encode (log-mel of the clip only, positional table sliced); "padded" is what
transformers does out of the box (log-mel padded to 3000 frames, WhisperEncoder.forward). Both are timed end to end
(log-mel + encoder) and encoder-only; prints medians and the padded/sliced ratio. Measured numbers only.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import median_ms  # also puts the repo root on sys.path and sets HF_HUB_OFFLINE=1

from safe.models.audio_encoders import SAMPLING_RATE, build_audio_encoder


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="whisper-tiny.en", help="audio encoder spec (see build_audio_encoder)")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args(argv)

    encoder = build_audio_encoder(args.spec, cache_dir=args.cache_dir)
    rng = np.random.default_rng(0)
    t = np.arange(int(args.seconds * SAMPLING_RATE)) / SAMPLING_RATE
    clip = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    fe = encoder.feature_extractor

    def padded_mel() -> torch.Tensor:
        return torch.from_numpy(fe(clip, sampling_rate=SAMPLING_RATE, return_tensors="np")["input_features"])

    mel_short, mel_full = encoder.log_mel(clip)[None], padded_mel()  # (1, 80, L), (1, 80, 3000)
    timing = {"repeats": args.runs, "warmup": 2}
    with torch.no_grad():
        results = {
            "sliced end-to-end": median_ms(lambda: encoder.encode([clip]), **timing),
            "padded end-to-end": median_ms(lambda: encoder.encoder(input_features=padded_mel()), **timing),
            "sliced encoder-only": median_ms(lambda: encoder.forward_mel(mel_short), **timing),
            "padded encoder-only": median_ms(lambda: encoder.encoder(input_features=mel_full), **timing),
        }
    print(f"spec={args.spec} clip={args.seconds:g}s mel frames sliced={mel_short.shape[-1]} padded={mel_full.shape[-1]} "
          f"runs={args.runs} torch threads={torch.get_num_threads()}")
    for name, ms in results.items():
        print(f"  {name:22s} median {ms:9.2f} ms")
    for kind in ("end-to-end", "encoder-only"):
        print(f"  speed-up {kind:13s} padded/sliced = {results[f'padded {kind}'] / results[f'sliced {kind}']:.1f}x")


if __name__ == "__main__":
    main()
