"""The researcher's path end to end, as the README's "Train on your own data and checkpoint" section takes it.

Files in the official VQAv2, GQA, Clotho, AudioCaps and AVQA formats (44.1 kHz audio, short videos) -> `safe ingest`
each -> `safe merge` -> `safe validate` -> a tiny `LlavaForConditionalGeneration` folder and a tiny CLAP folder
(save_pretrained) -> `profile: llava`, `data.source: manifest` in params.yaml -> `dvc repro` to promotion.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from checkpoints import tiny_clap_folder, tiny_llava_folder  # tests/checkpoints.py
from format_fixtures import COLORS, SOUNDS, write_researcher_sources  # tests/format_fixtures.py
from project_copy import copy_project, run  # tests/project_copy.py

pytestmark = pytest.mark.integration

STAGES = ["prepare_data", "extract_features", "base_vl", "stage_a", "stage_b", "stage_c", "evaluate", "promote"]
VL_ONLY_SOURCES = ("vqav2", "gqa")
AUDIO_ONLY_SOURCES = ("clotho", "audiocaps")
SAFE = [sys.executable, "-m", "safe.cli"]


@pytest.fixture(scope="module")
def researcher(tmp_path_factory):
    """Ingest, merge and validate the sources; write the checkpoints; run `dvc repro` once on the llava profile."""
    root = tmp_path_factory.mktemp("researcher")
    sources = write_researcher_sources(root / "raw", n=12)
    work = root / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    ingested = []
    for fmt, args in sources.items():
        out = root / "ingested" / f"{fmt}.jsonl"
        cmd = [*SAFE, "ingest", fmt, "--annotations", str(args["annotations"]), "--media-root",
               str(args["media_root"]), "--out", str(out)]
        if "questions" in args:
            cmd += ["--questions", str(args["questions"])]
        assert f"kept {12 if fmt != 'avqa' else 8}" in run(cmd, work, env).stdout
        ingested.append(str(out))
    merged = root / "ingested" / "merged.jsonl"
    merge = run([*SAFE, "merge", "--out", str(merged), "--val-ratio", "0.25", "--test-ratio", "0.25", *ingested],
                work, env).stdout
    validate = run([*SAFE, "validate", str(merged), "--data-docs", str(merged.parent / "data_docs")], work, env).stdout
    texts = ["what color is the picture ?", "which color is the image ?", "what sound do you hear ?",
             "what color is the video ?", "describe the sound .", "choices : /", *COLORS, *SOUNDS]
    llava = tiny_llava_folder(root / "checkpoints" / "llava", texts)
    clap = tiny_clap_folder(root / "checkpoints" / "clap")
    dst, denv = copy_project(root / "project", {
        "profile": "llava",
        "data": {"source": "manifest", "manifest": str(merged)},
        "model": {"base_vl": str(llava), "audio_encoder": f"clap:{clap}", "fusion_heads": 4, "fusion_layers": [0, -1],
                  "projector_hidden": 32, "lora_rank": 4},
        "stage_a": {"steps": 6, "batch_size": 8, "eval_every": 3, "fisher_batches": 1},
        "stage_b": {"steps": 20, "batch_size": 16},
        "stage_c": {"epochs": 10},
        "evaluate": {"bootstrap": 20, "latency_examples": 2},
    })
    repro = run(["dvc", "repro"], dst, denv, timeout=1200)
    return {"dst": dst, "env": denv, "merged": merged, "merge": merge, "validate": validate, "repro": repro.stdout}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_merge_prints_counts_and_validate_accepts_44khz_and_imageless_rows(researcher):
    merge = researcher["merge"]
    for source in (*VL_ONLY_SOURCES, *AUDIO_ONLY_SOURCES, "avqa"):
        assert source in merge
    assert "re-split by id hash" in merge and "PASSED" in researcher["validate"]
    assert (researcher["merged"].parent / "data_docs" / "index.html").is_file()
    rows = _rows(researcher["merged"])
    audio_only = [r for r in rows if r["source"] in AUDIO_ONLY_SOURCES]
    assert audio_only and all(r["image"] is None and r["audio"] for r in audio_only)
    assert all(r["audio"] is None for r in rows if r["source"] in VL_ONLY_SOURCES)
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    import soundfile as sf

    assert sf.info(str(researcher["merged"].parent / audio_only[0]["audio"])).samplerate == 44100


def test_dvc_repro_reaches_a_decision_with_the_criteria(researcher):
    dst = researcher["dst"]
    stages = ("prepare_data", "extract_features", "base_vl", "stage_a", "stage_b", "stage_c", "evaluate", "promote")
    for stage in stages:
        assert f"Running stage '{stage}'" in researcher["repro"]
    promotion = json.loads((dst / "data/eval/promotion.json").read_text())
    passed = all(c["passed"] for c in promotion["criteria"].values())
    assert promotion["decision"] == ("champion" if passed else "rejected")
    metrics = json.loads((dst / "data/eval/metrics.json").read_text())
    prepared = _rows(dst / "data/prepared/manifest.jsonl")
    assert metrics["n_test"] == sum(r["split"] == "test" for r in prepared) > 0
    assert 0.0 <= metrics["vl_acc_base"] <= 1.0 and 0.0 <= metrics["skip_rate"] <= 1.0
    assert metrics["retention_drop"] == pytest.approx(metrics["vl_acc_base"] - metrics["vl_acc_safe"])
    reference = json.loads((dst / "data/models/base_vl/reference.json").read_text())
    assert reference["checkpoint"].endswith("checkpoints/llava")  # the researcher's checkpoint, not one trained here
    assert json.loads((dst / "data/metrics/base_vl.json").read_text()) == {"trained_here": 0}


def test_vl_only_sources_never_run_the_audio_encoder(researcher):
    dst = researcher["dst"]
    encoded = set(json.loads((dst / "data/features/index.json").read_text())["ids"])
    prepared = _rows(dst / "data/prepared/manifest.jsonl")
    assert encoded == {r["id"] for r in prepared if r["audio"]}
    assert not any(i.startswith(VL_ONLY_SOURCES) for i in encoded)
    predictions = [p for p in _rows(dst / "data/eval/predictions.jsonl") if p["id"].startswith(VL_ONLY_SOURCES)]
    assert predictions and all(not p["has_audio"] and p["budget"] == 0 for p in predictions)
    assert all(p["pred_b12"] == p["pred_b0"] == p["pred_base"] for p in predictions)  # audio budget has no effect


def test_audio_only_rows_are_answered_without_an_image(researcher):
    predictions = [p for p in _rows(researcher["dst"] / "data/eval/predictions.jsonl")
                   if p["id"].startswith(AUDIO_ONLY_SOURCES)]
    assert predictions and all(p["has_audio"] and isinstance(p["pred_safe"], str) for p in predictions)


def test_data_docs_are_stage_outputs_and_mlflow_artifacts(researcher):
    dst = researcher["dst"]
    for suite in ("manifest", "features"):
        index = dst / "data/data_docs" / suite / "index.html"
        assert index.is_file() and "Data Docs" in index.read_text()
    logged = list((dst / "mlruns" / "artifacts").glob("*/artifacts/data_docs/index.html"))  # the runs' artifacts
    assert len(logged) == 2 and all("Data Docs" in page.read_text() for page in logged)  # prepare_data, features


def test_second_repro_reruns_nothing(researcher):
    result = run(["dvc", "repro"], researcher["dst"], researcher["env"])
    assert "Running stage" not in result.stdout, result.stdout


def test_changing_the_accepted_sample_rates_stops_the_dag_before_training(researcher, tmp_path):
    """Pinning data.sample_rates to 16 kHz rejects the 44.1 kHz clips by name; nothing downstream runs."""
    dst, env = researcher["dst"], researcher["env"]
    params = yaml.safe_load((dst / "params.yaml").read_text())
    original = (dst / "params.yaml").read_text()
    params["data"]["sample_rates"] = [16000]
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        result = subprocess.run(["dvc", "repro"], cwd=dst, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode != 0
        assert "audio_sample_rate" in result.stderr and "clotho-clip" in result.stderr
        assert "Running stage 'extract_features'" not in result.stdout
    finally:
        (dst / "params.yaml").write_text(original)
    # DVC removed prepare_data's outputs before the failed run, so only that stage reruns; nothing it feeds does,
    # because the data it rebuilds is the same as before the failed run.
    rerun = run(["dvc", "repro"], dst, env).stdout
    assert [s for s in STAGES if f"Running stage '{s}'" in rerun] in ([], ["prepare_data"]), rerun
