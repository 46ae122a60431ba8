"""`safe ingest`, `safe synth`, `safe validate` and `safe merge`: the data subcommands of the `safe` console script.

`register(subparsers)` adds them; each sets `func` to a function taking the parsed args and returning the
exit code. Data problems (malformed annotations, missing files, failed checks) print a readable message and
return 1 instead of raising a traceback; argparse usage errors exit with 2 as usual.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from safe.data.formats import FORMATS  # light: PyAV is imported only when a video is decoded

    p = subparsers.add_parser(
        "ingest",
        help="turn a real dataset's official annotations into a manifest",
        description="Read official annotation files, locate media under --media-root (frames/wavs, or videos "
        "decoded with PyAV), and write a manifest. Examples with missing media are skipped and listed.",
    )
    p.add_argument("format", choices=tuple(FORMATS), metavar="FORMAT", help=", ".join(FORMATS))
    p.add_argument("--annotations", required=True, type=Path, help="annotation file (JSON or CSV)")
    p.add_argument("--questions", type=Path, help="questions JSON (required for vqav2)")
    p.add_argument("--media-root", required=True, type=Path, help="folder holding images/audio/videos")
    p.add_argument("--out", required=True, type=Path, help="manifest to write (.jsonl)")
    p.add_argument("--split", help="train/val/test (default: from the annotation file name or rows)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="malformed annotation rows: stop (raise) or skip and report them (skip)")
    p.set_defaults(func=cmd_ingest)

    p = subparsers.add_parser("synth", help="generate the synthetic audio-visual QA benchmark")
    p.add_argument("--out", required=True, type=Path, help="output folder (manifest.jsonl, images/, audio/)")
    p.add_argument("--size", type=_positive_int, default=1000, help="total examples, split 70/15/15")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=_positive_int, default=32)
    p.add_argument("--clip-seconds", type=float, default=1.0)
    p.add_argument("--no-speech", action="store_true", help="leave out espeak-ng spoken-word clips")
    p.set_defaults(func=cmd_synth)

    p = subparsers.add_parser(
        "validate",
        help="run the Great Expectations manifest checks",
        description="Exit 0 when every check passes, 1 with a report naming failing rows otherwise.",
    )
    p.add_argument("manifest", type=Path, metavar="MANIFEST.jsonl")
    p.add_argument("--families", type=_names, help="allowed families, comma-separated (default: synthetic + "
                   "every family the dataset adapters emit)")
    p.add_argument("--family-proportions", type=_shares, help="expected shares, e.g. vl=0.3,audio=0.25")
    p.add_argument("--split-proportions", type=_shares, help="expected shares, e.g. train=0.7,val=0.15,test=0.15")
    p.add_argument("--tolerance", type=float, default=0.1, help="allowed absolute deviation of a share")
    p.add_argument("--sample-rates", default="any", help="allowed audio sample rates, comma-separated, or 'any' "
                   "(default: every rate the loader resamples)")
    p.add_argument("--min-seconds", type=float, default=0.05)
    p.add_argument("--max-seconds", type=float, default=30.0)
    p.add_argument("--no-media", action="store_true", help="skip the file existence/decoding checks")
    p.add_argument("--no-decode", action="store_true", help="read audio headers only (faster, misses truncation)")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.add_argument("--data-docs", type=Path, metavar="DIR", help="also write GX's HTML Data Docs into DIR")
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

    try:
        report = merge_manifests(args.inputs, args.out, SplitRatios(val=args.val_ratio, test=args.test_ratio))
    except (MergeError, ManifestError) as err:
        return _fail(str(err))
    print(report.summary())
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from safe.data.formats import ADAPTERS, FormatError, get_format
    from safe.data.manifest import ManifestError

    if ADAPTERS[args.format].needs_questions and args.questions is None:
        return _fail(f"{args.format} needs --questions (the questions JSON) as well as --annotations")
    try:
        report = get_format(args.format)(
            args.annotations, args.media_root, args.out, questions=args.questions, split=args.split,
            on_error=args.on_error,
        )
    except (FormatError, ManifestError) as err:
        return _fail(str(err))
    print(report.summary())
    if report.kept == 0:
        return _fail(f"no examples kept; nothing usable in {args.annotations}")
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
        return _fail(str(err))
    counts = ", ".join(f"{k} {v}" for k, v in sizes.items())
    print(f"synth: wrote {sum(sizes.values())} examples ({counts}) -> {path}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from safe.data.checks import SYNTH_FAMILIES, validate_manifest
    from safe.data.formats import FAMILIES

    if not args.manifest.is_file():
        return _fail(f"manifest not found: {args.manifest}")
    if args.sample_rates.strip().lower() == "any":
        rates = None
    else:
        try:
            rates = tuple(int(r) for r in args.sample_rates.split(",") if r.strip())
        except ValueError:
            return _fail(f"--sample-rates must be integers or 'any', got {args.sample_rates!r}")
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


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
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
