"""`safe ingest`, `safe synth`, `safe validate` and `safe merge`: the data subcommands of the `safe` console script.

`register(subparsers)` adds them; each sets `func` to a function taking the parsed args and returning the
exit code. Bad input (a missing or malformed file, a bad option) raises `UserError` or a library error naming
the file and row, which the CLI's error boundary prints as one line with exit 2; failed checks exit 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable

from safe.errors import EXIT_CRITERIA_FAILED, UserError

EXIT_CODES = ("exit codes: 0 success; 1 the checks failed (validate) or nothing was kept (ingest); 2 bad input "
              "(nothing written); 3 unexpected error")


def register(subparsers: argparse._SubParsersAction,
             add_common: Callable[[argparse.ArgumentParser], None] = lambda parser: None) -> None:
    """Add ingest, synth and validate; `add_common(parser)` adds the options every command shares (--debug)."""
    from safe.data.formats import FORMATS  # light: PyAV is imported only when a video is decoded

    p = subparsers.add_parser(
        "ingest",
        help="turn a real dataset's official annotations into a manifest",
        description="Read official annotation files, locate media under --media-root (frames/wavs, or videos "
        "decoded with PyAV), and write a manifest. Examples with missing media are skipped and listed.",
        epilog=EXIT_CODES,
    )
    p.add_argument("format", choices=tuple(FORMATS), metavar="FORMAT", help=", ".join(FORMATS))
    p.add_argument("--annotations", required=True, type=Path, help="annotation file (JSON or CSV)")
    p.add_argument("--questions", type=Path, help="questions JSON (required for vqav2)")
    p.add_argument("--media-root", required=True, type=Path, help="folder holding images/audio/videos")
    p.add_argument("--out", required=True, type=Path, help="manifest to write (.jsonl)")
    p.add_argument("--split", help="train/val/test (default: from the annotation file name or rows)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="malformed annotation rows: stop (raise) or skip and report them (skip)")
    add_common(p)
    p.set_defaults(func=cmd_ingest)

    p = subparsers.add_parser("synth", help="generate the synthetic audio-visual QA benchmark", epilog=EXIT_CODES)
    p.add_argument("--out", required=True, type=Path, help="output folder (manifest.jsonl, images/, audio/)")
    p.add_argument("--size", type=positive_int, default=1000, help="total examples, split 70/15/15 (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same bytes (default: 0)")
    p.add_argument("--image-size", type=positive_int, default=32, help="side of the square images in pixels "
                   "(default: 32)")
    p.add_argument("--clip-seconds", type=_positive_float, default=1.0, help="length of each audio clip in seconds "
                   "(default: 1.0)")
    p.add_argument("--no-speech", action="store_true", help="leave out espeak-ng spoken-word clips")
    add_common(p)
    p.set_defaults(func=cmd_synth)

    p = subparsers.add_parser(
        "validate",
        help="run the Great Expectations manifest checks",
        description="Exit 0 when every check passes, 1 with a report naming failing rows (and their files) "
        "otherwise, 2 when the manifest itself cannot be read.",
        epilog=EXIT_CODES,
    )
    p.add_argument("manifest", type=Path, metavar="MANIFEST.jsonl", help="the manifest to check (JSONL, UTF-8)")
    p.add_argument("--families", type=_names, help="allowed families, comma-separated (default: synthetic + "
                   "every family the dataset adapters emit)")
    p.add_argument("--family-proportions", type=_shares, help="expected shares, e.g. vl=0.3,audio=0.25")
    p.add_argument("--split-proportions", type=_shares, help="expected shares, e.g. train=0.7,val=0.15,test=0.15")
    p.add_argument("--tolerance", type=_share, default=0.1, help="allowed absolute deviation of a share, in [0, 1] "
                   "(default: 0.1)")
    p.add_argument("--sample-rates", default="any", help="allowed audio sample rates, comma-separated, or 'any' "
                   "(default: every rate the loader resamples)")
    p.add_argument("--min-seconds", type=_non_negative_float, default=0.05, help="shortest allowed clip in seconds "
                   "(default: 0.05)")
    p.add_argument("--max-seconds", type=_positive_float, default=30.0, help="longest allowed clip in seconds "
                   "(default: 30)")
    p.add_argument("--no-media", action="store_true", help="skip the file existence/decoding checks")
    p.add_argument("--no-decode", action="store_true", help="read audio headers only (faster, misses truncation)")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.add_argument("--data-docs", type=Path, metavar="DIR", help="also write GX's HTML Data Docs into DIR")
    add_common(p)
    p.set_defaults(func=cmd_validate)

    _register_merge(subparsers)


def _register_merge(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "merge",
        help="combine several manifests (e.g. one per ingested source) into one",
        description="Write one manifest from several: ids must be unique across them, media paths are rewritten to "
        "resolve from OUT's folder, and a source whose rows all carry one split is re-split train/val/test by a "
        "hash of each id (--val-ratio/--test-ratio). Prints the rows per source and split.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="IN.jsonl")
    p.add_argument("--out", required=True, type=Path, help="manifest to write (.jsonl)")
    p.add_argument("--val-ratio", type=float, default=0.15, help="val share for single-split sources")
    p.add_argument("--test-ratio", type=float, default=0.15, help="test share for single-split sources")
    p.set_defaults(func=cmd_merge)


def cmd_merge(args: argparse.Namespace) -> int:
    from safe.data.manifest import ManifestError
    from safe.data.merge import MergeError, SplitRatios, merge_manifests

    _check_output_file(args.out, "--out")
    try:
        report = merge_manifests(args.inputs, args.out, SplitRatios(val=args.val_ratio, test=args.test_ratio))
    except (MergeError, ManifestError) as err:
        raise UserError(str(err), where="safe merge", fix="fix the named manifest or row, then run it again") from None
    print(report.summary())
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from safe.data.formats import ADAPTERS, get_format

    if ADAPTERS[args.format].needs_questions and args.questions is None:
        raise UserError(f"{args.format} needs --questions (the questions JSON) as well as --annotations",
                        fix="pass --questions FILE")
    for option, path in (("--annotations", args.annotations), ("--questions", args.questions)):
        if path is not None and not path.is_file():
            raise UserError("file not found" if not path.exists() else "not a file", path=path, where=option)
    if not args.media_root.is_dir():
        raise UserError("folder not found" if not args.media_root.exists() else "not a folder", path=args.media_root,
                        where="--media-root", fix="pass the folder that holds the images/audio/videos")
    _check_output_file(args.out, "--out")
    # Written beside --out and renamed only when something was kept: a run that keeps nothing leaves no manifest.
    staging = args.out.with_name(f".{args.out.name}.ingesting")
    try:
        report = get_format(args.format)(
            args.annotations, args.media_root, staging, questions=args.questions, split=args.split,
            on_error=args.on_error,
        )  # FormatError / ManifestError name the file and row; the CLI's boundary prints them
        if report.kept:
            staging.replace(args.out)
    finally:
        staging.unlink(missing_ok=True)
    report.manifest = args.out.absolute()
    print(report.summary())
    if report.kept == 0:
        print(f"error: no examples kept; nothing usable in {describe(args.annotations)}", file=sys.stderr)
        return EXIT_CRITERIA_FAILED
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from safe.data.synth import generate_benchmark, split_sizes

    sizes = split_sizes(args.size)
    try:
        path = generate_benchmark(
            args.out, sizes, seed=args.seed, image_size=args.image_size, clip_seconds=args.clip_seconds,
            speech=not args.no_speech,
        )
    except ValueError as err:  # bad sizes / image size / clip length
        raise UserError(str(err), where="safe synth") from None
    counts = ", ".join(f"{k} {v}" for k, v in sizes.items())
    print(f"synth: wrote {sum(sizes.values())} examples ({counts}) -> {path}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from safe.data.checks import SYNTH_FAMILIES, validate_manifest
    from safe.data.formats import FAMILIES

    if not args.manifest.is_file():
        raise UserError("manifest not found" if not args.manifest.exists() else "not a file", path=args.manifest,
                        fix="pass the manifest (.jsonl) that safe ingest or safe synth wrote")
    if args.min_seconds > args.max_seconds:
        raise UserError(f"--min-seconds {args.min_seconds:g} is above --max-seconds {args.max_seconds:g}")
    if args.sample_rates.strip().lower() == "any":
        rates = None
    else:
        try:
            rates = tuple(int(r) for r in args.sample_rates.split(",") if r.strip())
        except ValueError:
            rates = ()
        if not rates or min(rates) <= 0:
            raise UserError(f"--sample-rates must be positive integers or 'any', got {args.sample_rates!r}",
                            fix="e.g. --sample-rates 16000,44100")
    if args.json is not None:
        _check_output_file(args.json, "--json")
    _check_has_rows(args.manifest)
    families = args.families or tuple(dict.fromkeys((*SYNTH_FAMILIES, *FAMILIES)))
    report = validate_manifest(
        args.manifest,
        expected_families=families,
        family_proportions=args.family_proportions,
        split_proportions=args.split_proportions,
        tolerance=args.tolerance,
        audio_seconds=(args.min_seconds, args.max_seconds),
        sample_rates=rates,
        check_media=not args.no_media,
        decode_audio=not args.no_decode,
        docs_dir=args.data_docs,
    )
    if args.json:
        report.write_json(args.json)
    print(report.summary(limit=10), file=sys.stdout if report.success else sys.stderr)
    if report.docs:
        print(f"Data Docs: {report.docs}")
    return 0 if report.success else 1


def describe(path: Path) -> str:
    from safe.errors import describe_path

    return describe_path(path)


def _check_output_file(path: Path, option: str) -> None:
    """An output file must be writable where asked: not a folder, its folder creatable. Checked before any work."""
    if path.is_dir():
        raise UserError("is a folder, expected a file name", path=path, where=option)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot create it: {parent} is not a folder", path=path, where=option)


def _check_has_rows(manifest: Path) -> None:
    """A manifest with no row at all (empty, blank lines, or no line a JSON object) is bad input, not a report."""
    from safe.data.checks import _read_rows

    rows, bad = _read_rows(manifest)
    if rows:
        return
    if not bad:
        raise UserError("manifest is empty (no rows)", path=manifest,
                        fix="point at the manifest safe ingest or safe synth wrote")
    shown = ", ".join(bad[:3]) + (f", ... ({len(bad)} bad lines)" if len(bad) > 3 else "")
    raise UserError(f"no line is a JSON object ({shown})", path=manifest,
                    fix="a manifest is JSONL in UTF-8: one JSON object per line")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _share(text: str) -> float:
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


def _shares(text: str) -> dict[str, float]:
    """"vl=0.3,audio=0.25" -> {"vl": 0.3, "audio": 0.25}."""
    shares = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            share = float(value)
        except ValueError:
            share = -1.0
        if not sep or not name.strip() or not 0.0 <= share <= 1.0:
            raise argparse.ArgumentTypeError(f"expected name=share with share in [0, 1], got {part!r}")
        shares[name.strip()] = share
    if not shares:
        raise argparse.ArgumentTypeError("expected name=share pairs")
    return shares
