"""`python data/prepare.py LAYOUT ...`: datasets as users hold them -> sharded DMVR TFRecords.

  kinetics       official CSVs (label,youtube_id,time_start,time_end,split) + clip files
  kinetics-list  the original repo's `kinetics400_{split}_list.txt` (path label_index)
  ssv2           something-something-v2-{train,validation}.json + labels.json (+ -with-label.json)
  ssv1           something-something-v1-{train,validation}.csv + labels csv + JPEG frame folders
  generic        a `path,label` CSV per split

Every layout takes `--split NAME=ANNOTATION` once per split and writes
`OUT/NAME-XXXXX-of-NNNNN`, `OUT/classes.txt` (the sorted / official class list),
`OUT/NAME.json` (summary) and `OUT/NAME-report.txt` (every skipped video or line
and why). Re-running resumes: complete shards are kept.
"""

import argparse
import math
import os
import sys
from typing import List, Optional, Sequence

from etils import epath

from tadax.data import annotations
from tadax.data.encode import EncodeOptions

DEFAULT_SHORT_SIDE = {"kinetics": 320, "kinetics-list": 320, "ssv2": 0, "ssv1": 0, "generic": 0}


def _splits(items: Sequence[str]) -> List[tuple]:
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--split expects NAME=ANNOTATION_FILE, got {item!r}")
        if not os.path.isfile(path):
            raise SystemExit(f"--split {name}: annotation file {path!r} not found")
        out.append((name, path))
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="data/prepare.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("layout", choices=sorted(DEFAULT_SHORT_SIDE))
    p.add_argument("--split", action="append", required=True, metavar="NAME=FILE",
                   help="a split to write and its annotation file (repeat per split)")
    p.add_argument("--root", required=True,
                   help="folder of the videos (searched recursively; ssv1: of the frame folders)")
    p.add_argument("--out", required=True, help="output folder of the shards")
    p.add_argument("--labels", help="ssv2: labels.json; ssv1: the labels csv; others: optional "
                   "class-name file (one a line, in index order)")
    p.add_argument("--short-side", type=int, default=None,
                   help="resize so the short side is this (0: keep); default 320 for Kinetics, "
                   "0 otherwise")
    p.add_argument("--target-fps", type=float, default=0.0,
                   help="keep frames at this rate (0: all frames at the native rate)")
    p.add_argument("--shards", type=int, default=0,
                   help="shards per split (0: one per ~1000 videos)")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="decoding processes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _classes(args, splits) -> List[str]:
    """The class list: official (ssv1/ssv2 label files, --labels) or sorted from annotations."""
    if args.layout == "ssv2":
        if not args.labels:
            raise SystemExit("ssv2 needs --labels labels.json")
        return annotations.ssv2_classes(args.labels)
    if args.layout == "ssv1":
        if not args.labels:
            raise SystemExit("ssv1 needs --labels something-something-v1-labels.csv")
        return annotations.ssv1_classes(args.labels)
    if args.labels:
        return annotations.read_classes(args.labels)
    paths = [p for _, p in splits]
    if args.layout == "kinetics":
        return annotations.kinetics_csv_labels(paths)
    if args.layout == "generic":
        return annotations.generic_csv_labels(paths)
    return []


def _entries(args, path: str, classes: List[str], videos):
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
    path = epath.Path(out) / "classes.txt"
    if path.is_file():
        existing = annotations.read_classes(path)
        if existing != classes:
            raise SystemExit(f"{path} exists with a different class list ({len(existing)} vs "
                             f"{len(classes)} classes): prepare all splits together, or pass "
                             f"--labels {path}")
    elif classes:
        annotations.write_classes(path, classes)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs a preparation; returns 0 (bad videos are skipped and reported, never fatal)."""
    from tadax.data import prepare

    args = _parser().parse_args(argv)
    splits = _splits(args.split)
    if not os.path.isdir(args.root):
        raise SystemExit(f"--root {args.root!r} is not a folder")
    epath.Path(args.out).mkdir(parents=True, exist_ok=True)
    classes = _classes(args, splits)
    _check_classes(args.out, classes)
    short = DEFAULT_SHORT_SIDE[args.layout] if args.short_side is None else args.short_side
    opts = EncodeOptions(short_side=short, target_fps=args.target_fps,
                         jpeg_quality=args.jpeg_quality)
    videos = annotations.index_videos(args.root) if args.layout in ("kinetics", "ssv2") else None
    for name, path in splits:
        entries, problems = _entries(args, path, classes, videos)
        shards = args.shards or max(1, math.ceil(len(entries) / 1000))
        summary = prepare.prepare_split(entries, problems, out_dir=args.out, name=name,
                                        num_shards=shards, opts=opts, workers=args.workers,
                                        quiet=args.quiet)
        print(prepare.format_summary(summary)
              + f" -> {args.out}/{name}-*-of-{shards:05d}; report: {args.out}/{name}-report.txt",
              file=sys.stderr)
    return 0
