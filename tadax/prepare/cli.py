"""`python -m tadax.prepare LAYOUT ...`: datasets as users hold them -> sharded DMVR TFRecords.

The checkout's `python data/prepare.py LAYOUT ...` is the same command.


  kinetics       official CSVs (label,youtube_id,time_start,time_end,split) + clip files
  kinetics-list  the original repo's `kinetics400_{split}_list.txt` (path label_index)
  ssv2           something-something-v2-{train,validation}.json + labels.json (+ -with-label.json)
  ssv1           something-something-v1-{train,validation}.csv + labels csv + JPEG frame folders
  generic        a `path,label` CSV per split

Every layout takes `--split NAME=ANNOTATION` once per split and writes
`OUT/NAME-XXXXX-of-NNNNN`, `OUT/classes.txt` (the sorted / official class list),
`OUT/NAME.json` (summary) and `OUT/NAME-report.txt` (every skipped video or line
and why). Re-running resumes: complete shards are kept. A split whose annotations
carry no labels (the SSv2 / SSv1 test lists, a Kinetics CSV without a `label`
column) is written unlabelled: label -1, empty label text. A re-run whose inputs or
options differ from what is in OUT is refused, naming the change (`--overwrite`
replaces the split). `--runner NAME [Beam pipeline options]` writes the shards
with an Apache Beam pipeline instead (same bytes), e.g. `--runner DirectRunner
--direct_num_workers 8 --direct_running_mode multi_processing`.

A bad command line (missing or unreadable file, wrong layout, invalid option)
ends with one line on stderr naming the argument and exit status 2; TensorFlow's
start-up log lines are hidden unless `--verbose`.
"""

import argparse
import contextlib
import dataclasses
import importlib.util
import math
import os
import re
import sys
from typing import List, Optional, Sequence

from etils import epath

from tadax import startup
from tadax.data import class_list
from tadax.prepare import annotations, fingerprint
from tadax.prepare.encode import FRAME_ENCODING, EncodeOptions

DEFAULT_SHORT_SIDE = {"kinetics": 320, "kinetics-list": 320, "ssv2": 0, "ssv1": 0, "generic": 0}
PROG = "python -m tadax.prepare"
# The generic layout records each video's path as its CSV gives it (older versions: the
# base name); a split prepared the old way is refused on a rerun, naming this.
GENERIC_FILENAMES = {"filename": "path as in the CSV"}
# A worker process starts by importing the command's main module and TensorFlow: up to
# ~3 CPU-s (under `python -m tadax.finetune`), the work of a dozen or more short clips, so
# a split gets one process per this many videos at most (fewer: decoded in this process).
VIDEOS_PER_WORKER = 32


def default_workers(num_videos: int) -> int:
    """Decoding processes for a split of `num_videos` when --workers is not given."""
    return max(1, min(os.cpu_count() or 1, num_videos // VIDEOS_PER_WORKER))


class InputError(Exception):
    """A bad command line or input file; the message (one line) names the argument and why."""


class ChangedInputError(InputError):
    """`--out` holds a split prepared from other inputs or options; `change` says what
    differs (the message also says what to do)."""

    def __init__(self, message: str, change: str):
        super().__init__(message)
        self.change = change


@contextlib.contextmanager
def _blame(argument: str):
    """Turns an unreadable annotation or class-list file into an `InputError` naming `argument`."""
    try:
        yield
    except class_list.TextFileError as e:
        raise InputError(f"{argument}: {e}") from None


def _splits(items: Sequence[str]) -> List[tuple]:
    """`--split NAME=FILE` values -> [(name, file)], each file an existing file."""
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--split expects NAME=ANNOTATION_FILE, got {item!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
            raise InputError(f"--split {item}: the name {name!r} must be letters, digits, '_', "
                             "'-' or '.' (it names the shard files)")
        if name in dict(out):
            raise InputError(f"--split {item}: split {name!r} given twice")
        if not epath.Path(path).exists():
            raise InputError(f"--split {item}: annotation file {path!r} not found")
        if epath.Path(path).is_dir():
            raise InputError(f"--split {item}: {path!r} is a folder, not an annotation file")
        out.append((name, path))
    return out


def _number(kind, low, what: str, high=math.inf):
    """An argparse type: `kind(text)` that is finite and in [low, high], else a usage error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("layout", choices=sorted(DEFAULT_SHORT_SIDE))
    p.add_argument("--split", action="append", required=True, metavar="NAME=FILE",
                   help="a split to write and its annotation file (repeat per split)")
    p.add_argument("--root", required=True,
                   help="folder of the videos (searched recursively; ssv1: of the frame folders)")
    p.add_argument("--out", required=True, help="output folder of the shards")
    p.add_argument("--labels", help="ssv2: labels.json; ssv1: the labels csv; others: optional "
                   "class-name file (one a line, in index order)")
    p.add_argument("--short-side", type=_number(int, 0, "an integer >= 0"), default=None,
                   help="downscale frames whose short side is larger to this, keep smaller "
                   "ones as decoded (0: keep all); default 320 for Kinetics, 0 otherwise")
    p.add_argument("--target-fps", type=_number(float, 0, "a frame rate >= 0"), default=0.0,
                   help="keep frames at this rate (0: all frames at the native rate)")
    p.add_argument("--shards", type=_number(int, 0, "an integer >= 0"), default=0,
                   help="shards per split (0: one per ~1000 videos)")
    p.add_argument("--jpeg-quality", type=_number(int, 1, "an integer in 1..100", 100),
                   default=90)
    p.add_argument("--workers", type=_number(int, 1, "an integer >= 1"),
                   help="decoding processes (default: one per core, but at most one per "
                   f"{VIDEOS_PER_WORKER} videos of a split)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true",
                   help="show TensorFlow's start-up log lines (hidden by default)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a split already in --out that was prepared from other inputs "
                   "or options (default: refuse, naming what changed)")
    p.add_argument("--runner", help="write the shards with this Apache Beam runner "
                   "(DirectRunner, DataflowRunner, ...); further Beam pipeline options may follow")
    return p


def _classes(args, splits) -> List[str]:
    """The class list: official (ssv1/ssv2 label files, --labels) or sorted from annotations."""
    if args.layout in ("ssv2", "ssv1") and not args.labels:
        raise InputError(f"{args.layout} needs --labels "
                         + ("labels.json" if args.layout == "ssv2"
                            else "something-something-v1-labels.csv"))
    if args.labels:
        if not epath.Path(args.labels).is_file():
            raise InputError(f"--labels {args.labels}: file not found")
        with _blame("--labels"):
            if args.layout == "ssv2":
                return annotations.ssv2_classes(args.labels)
            if args.layout == "ssv1":
                return annotations.ssv1_classes(args.labels)
            return class_list.read_classes(args.labels)
    paths = [p for _, p in splits]
    with _blame("--split"):
        if args.layout == "kinetics":
            return annotations.kinetics_csv_labels(paths)
        if args.layout == "generic":
            return annotations.generic_csv_labels(paths)
    return []


def _entries(args, name: str, path: str, classes: List[str], videos):
    with _blame(f"--split {name}"):
        if args.layout == "kinetics":
            return annotations.kinetics_csv(path, args.root, classes, videos)
        if args.layout == "kinetics-list":
            return annotations.kinetics_list(path, args.root, classes or None)
        if args.layout == "ssv2":
            return annotations.ssv2_json(path, args.root, classes, videos)
        if args.layout == "ssv1":
            return annotations.ssv1_csv(path, args.root, classes)
        return annotations.generic_csv(path, args.root, classes)


def _check_classes(out: str, classes: List[str]) -> None:
    """Writes `classes.txt`, or checks it against the one already in `out` (no class list:
    an unlabelled split, nothing to check)."""
    path = epath.Path(out) / "classes.txt"
    if not classes:
        return
    if path.is_file():
        with _blame("--out"):
            existing = class_list.read_classes(path)
        if existing != classes:
            raise InputError(f"{path} exists with a different class list ({len(existing)} vs "
                             f"{len(classes)} classes): prepare all splits together, or pass "
                             f"--labels {path}")
    else:
        class_list.write_classes(path, classes)


def _make_out(out: str) -> None:
    path = epath.Path(out)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None


def _import_splits(verbose: bool):
    """`tadax.prepare.splits`, importing TensorFlow with its start-up log lines hidden unless
    `verbose`: they are written to file descriptor 2 by C++ before TF's log level applies,
    so that descriptor points at /dev/null during the import; later INFO lines are off."""
    if verbose:
        from tadax.prepare import splits
        return splits
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    startup.import_tensorflow_quietly()
    from tadax.prepare import splits
    return splits


def parse_args(argv: Optional[Sequence[str]] = None, prog: str = PROG):
    """(options, Beam pipeline options): what follows `--runner NAME` that is not ours goes
    to Beam; without `--runner` an unknown argument is a usage error (exit status 2)."""
    parser = _parser(prog)
    args, beam_args = parser.parse_known_args(argv)
    if beam_args and not args.runner:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    return args, beam_args


def prepare(argv: Sequence[str]) -> None:
    """Runs the preparation that the command line `argv` (as `main` takes it) describes, in
    this process; bad input raises `InputError` (`ChangedInputError` for a split of `--out`
    prepared from other inputs) instead of ending the process."""
    args, beam_args = parse_args(argv)
    _run(args, beam_args)


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    """Runs a preparation; returns 0 (bad videos and annotation lines are skipped and
    reported, never fatal), or 2 after one line on stderr, `PROG: error: ...`, for a bad
    command line. `prog` names the command in messages."""
    args, beam_args = parse_args(argv, prog)
    try:
        return _run(args, beam_args)
    except InputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def _beam_args(runner: str, extra: List[str]) -> List[str]:
    """The Beam pipeline options for `--runner`, checked before any work is done."""
    if importlib.util.find_spec("apache_beam") is None:
        raise InputError(f"--runner {runner}: Apache Beam is not installed "
                         "(pip install 'tadax[beam]', or apache-beam==2.77.0)")
    from tadax.prepare import beam

    beam_args = ["--runner", runner] + extra
    try:
        beam.check_runner(beam_args)
    except ValueError as e:
        raise InputError(str(e)) from None
    return beam_args


def _run(args, extra_args: List[str]) -> int:
    """Reads every annotation file and checks every split's fingerprint before writing
    anything, then writes each split."""
    beam_args = _beam_args(args.runner, extra_args) if args.runner else None
    splits = _splits(args.split)
    if not epath.Path(args.root).is_dir():
        raise InputError(f"--root {args.root}: not a folder")
    classes = _classes(args, splits)
    videos = annotations.index_videos(args.root) if args.layout in ("kinetics", "ssv2") else None
    read = [(name, *_entries(args, name, path, classes, videos)) for name, path in splits]
    _make_out(args.out)
    _check_classes(args.out, classes)
    short = DEFAULT_SHORT_SIDE[args.layout] if args.short_side is None else args.short_side
    opts = EncodeOptions(short_side=short, target_fps=args.target_fps,
                         jpeg_quality=args.jpeg_quality)
    writer = _import_splits(args.verbose)     # TensorFlow: only after the input checks
    plans = []
    for (name, entries, problems), (_, path) in zip(read, splits):
        shards = args.shards or max(1, math.ceil(len(entries) / 1000))
        options = dict(layout=args.layout, num_shards=shards, classes=classes,
                       frame_encoding=FRAME_ENCODING, **dataclasses.asdict(opts),
                       **GENERIC_FILENAMES if args.layout == "generic" else {})
        files = {f"--split {name}": path, **({"--labels": args.labels} if args.labels else {})}
        fp = fingerprint.compute(entries, files, args.root, options)
        if not args.overwrite:
            try:
                writer.check_fingerprint(args.out, name, fp)
            except writer.StaleOutputError as e:
                raise ChangedInputError(str(e), e.change) from None
        plans.append((name, entries, problems, shards, fp))
    for name, entries, problems, shards, fp in plans:
        writer.record_fingerprint(args.out, name, fp, overwrite=args.overwrite)
        summary = writer.prepare_split(entries, problems, out_dir=args.out, name=name,
                                       num_shards=shards, opts=opts,
                                       workers=args.workers or default_workers(len(entries)),
                                       quiet=args.quiet, beam_args=beam_args)
        unlabelled = bool(entries) and all(e.label == annotations.UNLABELLED for e in entries)
        print(writer.format_summary(summary)
              + (" (unlabelled split: label -1)" if unlabelled else "")
              + f" -> {args.out}/{name}-*-of-{shards:05d}; report: {args.out}/{name}-report.txt",
              file=sys.stderr)
    return 0
