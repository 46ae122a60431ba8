"""base_vl and Stage A under accelerate DDP: 2 CPU processes (gloo) train the same weights as 1 process on the same
global batch (the real `accelerate launch` command the pipeline uses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from safe.distributed import launch_command

SCRIPTS = Path(__file__).parent / "scripts"
# Float sums over a split batch differ from the one-process sums in the last bits, and Adam amplifies them where a
# gradient is near zero, by an amount that depends on the CPU; normalising each process's loss by its own token
# count instead of the global one moves the weights ~100x more than this bound.
ATOL = 1e-4


def _launch(script: str, args: list, processes: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false"}
    path = str(SCRIPTS / script)
    if processes == 1:
        cmd = [sys.executable, path, *map(str, args)]
    else:  # the real launcher, as the pipeline uses it (`-m module` swapped for the script path)
        cmd = launch_command("x", processes)[:-2] + [path, *map(str, args)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _run(bench_dir: Path, base_dir: Path, out: Path, processes: int, steps: int, accumulation: int) -> dict:
    _launch("stage_a_ddp.py", [bench_dir, base_dir, out, steps, accumulation], processes)
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def bench_on_disk(bench, trained_base, tmp_path_factory):
    manifest, store = bench
    root = Path(manifest.path).parent
    store.save(root / "features")
    return root, Path(trained_base.source)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_stage_a_two_processes_train_the_same_weights_as_one(bench_on_disk, tmp_path, accumulation):
    bench_dir, base_dir = bench_on_disk
    one = _run(bench_dir, base_dir, tmp_path / "one.pt", 1, steps=6, accumulation=accumulation)
    two = _run(bench_dir, base_dir, tmp_path / "two.pt", 2, steps=6, accumulation=accumulation)
    assert (one["world"], two["world"]) == (1, 2)
    moved = max((one["last"][k] - one["start"][k]).abs().max().item() for k in one["last"])
    assert moved > 100 * ATOL, f"training barely moved the weights ({moved:.3g}): the comparison would prove nothing"
    diff = max((one["last"][k] - two["last"][k]).abs().max().item() for k in one["last"])
    print(f"accumulation {accumulation}: max |dw| 1 vs 2 processes = {diff:.3g}; weights moved {moved:.3g}")
    assert diff < ATOL, f"1 vs 2 processes: max |dw| = {diff:.3g}"
    # The retention checks saw the same predictions, so both runs made the same decisions.
    evals = lambda h: [(r["step"], r["retention_drop"], r["audio_acc_safe"], r.get("rollback")) for r in h  # noqa: E731
                       if "retention_drop" in r]
    assert evals(one["history"]) == evals(two["history"])
    assert set(one["best"]) == set(two["best"])


def test_base_vl_two_processes_train_the_same_model_as_one(bench, tmp_path):
    bench_dir = Path(bench[0].path).parent
    for processes in (1, 2):
        _launch("base_vl_ddp.py", [bench_dir, tmp_path / str(processes), 2], processes)
    one, two = (load_file(tmp_path / str(n) / "model" / "model.safetensors") for n in (1, 2))
    reports = [json.loads((tmp_path / str(n) / "report.json").read_text()) for n in (1, 2)]
    assert [r["world"] for r in reports] == [1, 2]
    diff = max((one[k].float() - two[k].float()).abs().max().item() for k in one)
    print(f"base_vl: max |dw| 1 vs 2 processes = {diff:.3g}")
    assert diff < ATOL, f"1 vs 2 processes: max |dw| = {diff:.3g}"
    assert [h["val_acc"] for h in reports[0]["history"]] == [h["val_acc"] for h in reports[1]["history"]]
    assert reports[0]["history"][-1]["train_loss"] == pytest.approx(reports[1]["history"][-1]["train_loss"], rel=1e-4)
