"""`safe merge`: one manifest from several ingested ones, by its exit code, what it prints and what it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from safe.cli import main
from safe.data.manifest import ManifestRecord, read_manifest, write_manifest
from safe.data.media import write_wav
from safe.data.merge import SplitRatios


def _source(folder: Path, source: str, n: int, splits=("val",), audio_only: bool = False) -> Path:
    """An ingested-looking manifest in its own folder, media beside it (44.1 kHz audio for audio-only sources)."""
    folder.mkdir(parents=True)
    records = []
    for i in range(n):
        image = audio = None
        if audio_only:
            audio = f"clips/{i}.wav"
            write_wav(folder / audio, 0.1 * np.sin(np.arange(4410) / 3.0), 44100)
        else:
            image = f"imgs/{i}.png"
            (folder / "imgs").mkdir(exist_ok=True)
            Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / image)
        records.append(ManifestRecord(id=f"{source}-{i}", split=splits[i % len(splits)], source=source,
                                      family="audio_caption" if audio_only else "vl", question="q?", answer="a",
                                      image=image, audio=audio, needs_audio=audio_only))
    return write_manifest(records, folder / "manifest.jsonl")


def test_merge_resplits_single_split_sources_and_keeps_media_resolving(tmp_path, capsys):
    vqa = _source(tmp_path / "vqav2", "vqav2", 40)  # all val
    clotho = _source(tmp_path / "clotho", "clotho", 30, audio_only=True, splits=("train",))
    avqa = _source(tmp_path / "avqa", "avqa", 9, splits=("train", "val", "test"))  # has its own splits
    out = tmp_path / "elsewhere" / "merged.jsonl"
    assert main(["merge", "--out", str(out), str(vqa), str(clotho), str(avqa)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 79 examples from 3 source(s)" in printed
    assert "re-split by id hash (arrived as val only)" in printed and "arrived as train only" in printed
    merged = read_manifest(out)
    by_source = {s: [r for r in merged if r.source == s] for s in ("vqav2", "clotho", "avqa")}
    assert {r.split for r in by_source["vqav2"]} == {"train", "val", "test"}
    assert all(r.extras["source_split"] == "val" for r in by_source["vqav2"])
    assert [r.split for r in by_source["avqa"]] == ["train", "val", "test"] * 3  # the source's own held-out rows
    assert all("source_split" not in r.extras for r in by_source["avqa"])
    for r in merged:
        assert merged.resolve(r.image or r.audio).is_file()
    vqa_line = next(line for line in printed.splitlines() if line.split()[:1] == ["vqav2"])
    counts = [int(x) for x in vqa_line.split()[1:4]]
    assert counts == [sum(r.split == s for r in by_source["vqav2"]) for s in ("train", "val", "test")]
    assert sum(counts) == 40
    # 44.1 kHz audio-only and image-only rows pass the default checks; the Data Docs say so in HTML
    assert main(["validate", str(out), "--data-docs", str(tmp_path / "docs")]) == 0
    assert f"Data Docs: {tmp_path / 'docs' / 'index.html'}" in capsys.readouterr().out


def test_split_by_id_hash_is_deterministic_and_follows_the_ratios():
    ratios = SplitRatios(val=0.2, test=0.1)
    splits = [ratios.split_of(f"id-{i}") for i in range(4000)]
    assert splits == [ratios.split_of(f"id-{i}") for i in range(4000)]
    assert abs(splits.count("val") / 4000 - 0.2) < 0.03 and abs(splits.count("test") / 4000 - 0.1) < 0.03


def test_clashing_ids_name_both_files_and_write_nothing(tmp_path, capsys):
    a = _source(tmp_path / "a", "vqav2", 3)
    b = _source(tmp_path / "b", "vqav2", 2)
    out = tmp_path / "merged.jsonl"
    assert main(["merge", "--out", str(out), str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "id 'vqav2-0' is in both" in err and str(a) in err and str(b) in err and "Traceback" not in err
    assert not out.exists()


def test_missing_media_and_bad_ratios_are_messages(tmp_path, capsys):
    a = _source(tmp_path / "a", "gqa", 3)
    (tmp_path / "a" / "imgs" / "1.png").unlink()
    assert main(["merge", "--out", str(tmp_path / "m.jsonl"), str(a)]) == 2
    assert "row 'gqa-1': image file not found" in capsys.readouterr().err
    assert main(["merge", "--out", str(tmp_path / "m.jsonl"), "--val-ratio", "0.6", "--test-ratio", "0.5", str(a)]) == 2
    assert "val + test ratios" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x"}) + "\n")
    assert main(["merge", "--out", str(tmp_path / "m.jsonl"), str(bad)]) == 2
    assert "bad.jsonl line 1: missing field" in capsys.readouterr().err
    assert not (tmp_path / "m.jsonl").exists()
