"""How fast the commands answer, side by side with what importing their libraries costs.

    python benchmarks/bench_cli.py [--repeats 3]

Every number is the median wall time of a fresh `python -m safe.cli ...` process (what a user waits for), over
`--repeats` runs after one warm-up run (which also converts Whisper tiny.en into the cache once):
  - `safe --help`, and the bare imports of torch, of the model stack (safe.models.safe_model: torch + transformers)
    and of Great Expectations;
  - `safe infer --model FOLDER` on two bundles built here with random weights (answer time does not depend on
    training): the tiny profile's sizes and the demo profile's (Whisper tiny.en, the demo LLaVA sizes);
  - `safe validate` of a 10-row synthetic manifest (media decoded).
Nothing is asserted; the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (repo root on sys.path, offline env)

ROOT = Path(__file__).resolve().parents[1]


def build_bundle(folder: Path, profile: str) -> Path:
    """A deployable bundle with the profile's sizes and random weights."""
    import torch

    from _common import demo_base_vl
    from safe.inference import assemble_bundle
    from safe.models.audio_encoders import build_audio_encoder
    from safe.models.safe_model import SAFEArchitecture, SAFEModel
    from safe.rl.state_features import state_dim
    from safe.models.budget_gate import BudgetGate, save_gate

    torch.manual_seed(0)
    cfg, base = demo_base_vl(profile)
    encoder = build_audio_encoder(cfg.model.audio_encoder, seed=0)
    model = SAFEModel(base, SAFEArchitecture.from_config(cfg.model, audio_embed_dim=encoder.embed_dim),
                      audio_encoder=encoder)
    base.save_pretrained(folder / "base")
    model.save_trainable(folder / "stage_a", extra_config={"audio_encoder": cfg.model.audio_encoder, "seed": 0})
    save_gate(BudgetGate(state_dim(base.hidden_size), hidden_dim=cfg.stage_c.hidden_dim), folder / "gate")
    return assemble_bundle(folder / "safe", str(folder / "base"), folder / "stage_a", folder / "gate")


def median_seconds(command: list[str], cwd: Path, repeats: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(command, cwd=cwd, env=env, capture_output=True, check=True)  # warm-up (page cache, conversion)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, cwd=cwd, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


PHASES = """
import json, sys, time
t0 = time.perf_counter()
import safe.models.safe_model, safe.models.budget_gate  # noqa: E401  (the model stack)
t1 = time.perf_counter()
from safe.data.media import load_audio, load_image
from safe.inference import SAFEPredictor, check_bundle, check_question
bundle, image, audio, question = sys.argv[1:5]
check_question(question, bundle, check_bundle(bundle))
img, wave = load_image(image), load_audio(audio, max_seconds=30.0)
t2 = time.perf_counter()
predictor = SAFEPredictor.load(bundle)
t3 = time.perf_counter()
predictor.predict(img, wave, question)
t4 = time.perf_counter()
predictor.predict(img, wave, question)
t5 = time.perf_counter()
print(json.dumps({"import the model stack": t1 - t0, "check inputs (bundle files, question, media)": t2 - t1,
                  "load the model": t3 - t2, "first answer": t4 - t3, "second answer": t5 - t4}))
"""


def phases(bundle: Path, image: Path, audio: Path, question: str) -> dict[str, float]:
    """Where one `safe infer` spends its time, phase by phase, in one fresh process."""
    import json

    out = subprocess.run([sys.executable, "-c", PHASES, str(bundle), str(image), str(audio), question],
                         capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per command (median reported)")
    args = parser.parse_args(argv)
    py, cli = sys.executable, [sys.executable, "-m", "safe.cli"]
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bench = work / "bench"
        subprocess.run([*cli, "synth", "--out", bench, "--size", "20", "--seed", "0", "--no-speech"], check=True,
                       capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        lines = (bench / "manifest.jsonl").read_text().splitlines()
        (bench / "ten.jsonl").write_text("\n".join(lines[:10]) + "\n")
        row = next(__import__("json").loads(x) for x in lines if '"audio": "audio/' in x and '"image": "images/' in x)
        image, audio = bench / row["image"], bench / row["audio"]
        bundles = {p: build_bundle(work / p, p) for p in ("tiny", "demo")}
        timed = {
            "import safe.cli (what `safe --help` loads)": [py, "-c", "import safe.cli"],
            "safe --help": [*cli, "--help"],
            "import torch": [py, "-c", "import torch"],
            "import the model stack (torch + transformers + safe.models)": [py, "-c", "import safe.models.safe_model"],
            "import great_expectations": [py, "-c", "import great_expectations"],
            **{f"safe infer --model <{p} bundle> (image + audio)":
               [*cli, "infer", "--model", bundles[p], "--image", image, "--audio", audio, "--question",
                row["question"]] for p in bundles},
            "safe validate (10 rows, media decoded)": [*cli, "validate", bench / "ten.jsonl", "--sample-rates", "any"],
        }
        print(f"\n== command wall times (median of {args.repeats} fresh processes after one warm-up)")
        for name, command in timed.items():
            seconds = median_seconds([str(c) for c in command], work, args.repeats)
            results[name] = seconds
            print(f"  {name:<64} {seconds:7.2f} s")
        for p, folder in bundles.items():
            print(f"\n== safe infer on the {p} bundle, phase by phase (one fresh process)")
            for name, seconds in phases(folder, image, audio, row["question"]).items():
                results[f"{p}: {name}"] = seconds
                print(f"  {name:<64} {seconds:7.2f} s")
    model_stack = results["import the model stack (torch + transformers + safe.models)"]
    for p in ("tiny", "demo"):
        answer = results[f"safe infer --model <{p} bundle> (image + audio)"]
        print(f"  infer {p}: {answer:.2f} s to answer, of which importing the model stack {model_stack:.2f} s "
              f"({model_stack / answer:.0%})")
    return results


if __name__ == "__main__":
    main()
