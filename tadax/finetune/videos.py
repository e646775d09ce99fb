"""Your videos as a labelled list, and its seeded, stratified train/val split.

Two ways to give them: a folder with one sub-folder per class (`DIR/CLASS/**/*.mp4`,
the class named by its folder), or a `path,label` CSV (paths relative to `--videos`
when given, else to the CSV's folder, or absolute). Either may be local or gs://.
Lines and files that cannot be used are skipped and listed, never fatal; a class
with fewer than two videos (one to train on, one to validate) is an error.

The split holds out `round(fraction x n)` of each class's n videos (at least one,
at most n - 1), drawn with a generator seeded by (seed, the class name): a class's
split depends on the seed and its own videos only. It is written to `W/split/`
(`train.csv`, `val.csv`, `classes.txt`, `split.json`); a rerun recomputes it and
must find the same, else it stops naming what changed.
"""

import dataclasses
import hashlib
import json
from typing import Dict, List, Sequence, Tuple

import numpy as np
from etils import epath

from tadax.data import class_list
from tadax.errors import ConfigError
from tadax.paths import is_remote, user_path
from tadax.prepare.annotations import VIDEO_EXTENSIONS, generic_rows
from tadax.progress import Progress

SPLIT_DIR = "split"
SPLIT_FILES = ("train.csv", "val.csv", "classes.txt", "split.json")


@dataclasses.dataclass(frozen=True)
class Listing:
    """Labelled videos: `videos` are (path relative to `root`, or absolute, class name),
    sorted; `classes` the sorted class names; `skipped` (source, why) for every unusable
    file or line."""
    root: str
    videos: Tuple[Tuple[str, str], ...]
    classes: Tuple[str, ...]
    skipped: Tuple[Tuple[str, str], ...]


def _is_video(name: str) -> bool:
    return epath.Path(name).suffix.lower() in VIDEO_EXTENSIONS


def _is_absolute_local(path: str) -> bool:
    """True for an absolute local path (a URL is not local)."""
    return not is_remote(path) and epath.Path(path).is_absolute()


def _sorted_classes(names) -> Tuple[str, ...]:
    """Sorted names; numerically when every name is an integer (then 2 < 10)."""
    names = set(names)
    if names and all(n.isdigit() for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def from_folders(videos_dir: str) -> Listing:
    """The videos under `videos_dir`'s class folders (any depth below a class folder)."""
    root = user_path(videos_dir)
    if not root.is_dir():
        raise ConfigError(f"--videos {videos_dir}: not a folder")
    videos, skipped = [], []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            if _is_video(entry.name):
                skipped.append((str(entry), "not in a class folder"))
            continue
        for folder, _, names in entry.walk():
            for name in names:
                if _is_video(name):
                    videos.append(((folder / name).relative_to(root).as_posix(), entry.name))
    if not videos:
        raise ConfigError(f"--videos {videos_dir}: no videos in class folders (expected "
                          f"{videos_dir}/CLASS/VIDEO.mp4, one folder per class)")
    return Listing(str(root), tuple(sorted(videos)), _sorted_classes(c for _, c in videos),
                   tuple(skipped))


def from_csv(csv_path: str, videos_dir: str = "") -> Listing:
    """The `path,label` rows of `csv_path` (optional `path,label` header) whose file
    exists; paths relative to `videos_dir`, else to the CSV's folder, or absolute local
    paths."""
    csv_file = user_path(csv_path)
    if not csv_file.is_file():
        raise ConfigError(f"--csv {csv_path}: file not found")
    root = user_path(videos_dir) if videos_dir else csv_file.parent
    if videos_dir and not root.is_dir():
        raise ConfigError(f"--videos {videos_dir}: not a folder")
    videos, skipped = [], []
    try:
        rows = list(generic_rows(str(csv_file)))
    except class_list.TextFileError as e:
        raise ConfigError(f"--csv {e}") from None
    for source, row, why in rows:
        if row is None:
            skipped.append((source, f"malformed line: {why}"))
            continue
        path, label = row
        full = epath.Path(path) if _is_absolute_local(path) else root / path
        if is_remote(path):
            skipped.append((source, "an absolute URL: give paths relative to --videos or "
                                    "to the CSV's folder"))
        elif not full.is_file():
            skipped.append((source, f"video file not found: {full}"))
        else:
            videos.append((path, label))
    if not videos:
        raise ConfigError(f"--csv {csv_path}: no usable 'path,label' line"
                          + (f" ({len(skipped)} skipped, e.g. {skipped[0][0]}: "
                             f"{skipped[0][1]})" if skipped else ""))
    return Listing(str(root), tuple(sorted(set(videos))), _sorted_classes(c for _, c in videos),
                   tuple(skipped))


def _class_seed(seed: int, name: str) -> List[int]:
    return [seed, int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")]


def stratified_split(videos: Sequence[Tuple[str, str]], val_fraction: float, seed: int
                     ) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
    """(train, val) lists of (path, class): `round(val_fraction x n)` of each class's n
    videos, at least 1 and at most n - 1, in val; each list sorted by path."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"finetune.val_fraction={val_fraction}: must be between 0 and 1")
    by_class: Dict[str, List[str]] = {}
    for path, name in sorted(videos):
        by_class.setdefault(name, []).append(path)
    small = {name: len(paths) for name, paths in by_class.items() if len(paths) < 2}
    if small:
        raise ConfigError("every class needs at least 2 videos (one to train on, one to "
                          "validate): " + ", ".join(f"{n!r} has {k}" for n, k in
                                                    sorted(small.items())))
    if len(by_class) < 2:
        raise ConfigError(f"one class only ({next(iter(by_class))!r}): a classifier needs at "
                          "least 2")
    train, val = [], []
    for name, paths in by_class.items():
        n_val = min(len(paths) - 1, max(1, int(round(val_fraction * len(paths)))))
        held = set(np.random.default_rng(_class_seed(seed, name)).permutation(len(paths))[:n_val])
        for i, path in enumerate(paths):
            (val if i in held else train).append((path, name))
    return sorted(train), sorted(val)


def _csv_text(rows: Sequence[Tuple[str, str]]) -> str:
    """`path,label` rows with a header, quoted where needed (commas, quotes in names)."""
    import csv
    import io
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "label"])
    writer.writerows(rows)
    return out.getvalue()


def _difference(old: str, new: str) -> str:
    """What differs between two split CSV texts, in a few words."""
    old_rows = set(old.splitlines()[1:])
    new_rows = set(new.splitlines()[1:])
    parts = []
    for what, rows in (("added", new_rows - old_rows), ("removed", old_rows - new_rows)):
        if rows:
            first = sorted(rows)[0]
            parts.append(f"{len(rows)} line(s) {what} ({first}"
                         + (" and more)" if len(rows) > 1 else ")"))
    return "; ".join(parts)


def record_split(workdir: epath.Path, listing: Listing, val_fraction: float, seed: int
                 ) -> Dict[str, object]:
    """Splits `listing` and writes the split to `workdir/split/`, or checks it against the
    split written there by an earlier run (ConfigError naming the change). Returns the
    summary written to `split.json`."""
    train, val = stratified_split(listing.videos, val_fraction, seed)
    texts = {"train.csv": _csv_text(train), "val.csv": _csv_text(val),
             "classes.txt": "".join(c + "\n" for c in listing.classes)}
    counts = {c: [0, 0] for c in listing.classes}
    for rows, k in ((train, 0), (val, 1)):
        for _, name in rows:
            counts[name][k] += 1
    summary = {"root": listing.root, "val_fraction": val_fraction, "split_seed": seed,
               "num_train": len(train), "num_val": len(val),
               "classes": {c: {"train": t, "val": v} for c, (t, v) in counts.items()},
               "skipped": [{"source": s, "reason": r} for s, r in listing.skipped]}
    folder = workdir / SPLIT_DIR
    if (folder / "train.csv").exists():
        for name, text in texts.items():
            old = (folder / name).read_text() if (folder / name).exists() else ""
            if old != text:
                what = (_difference(old, text) if name.endswith(".csv")
                        else "the class list changed")
                raise ConfigError(
                    f"{workdir} was split from other videos or settings ({name}: {what}): "
                    "fine-tune into a new --workdir, or run with the videos and "
                    "finetune.val_fraction / split_seed it was made with")
        return json.loads((folder / "split.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "split.json").write_text(json.dumps(summary, indent=1))
    for name in ("classes.txt", "val.csv", "train.csv"):   # train.csv last: marks it complete
        (folder / name).write_text(texts[name])
    return summary


def local_videos(listing: Listing, cache_dir: str) -> str:
    """A local folder holding `listing`'s relative paths: `listing.root` itself, or for a
    gs:// root a cache folder the videos are copied to (a file already there with the same
    size is kept, so a rerun copies nothing and the preparation finds it unchanged)."""
    if not is_remote(listing.root):
        return listing.root
    digest = hashlib.sha1(listing.root.encode()).hexdigest()[:12]
    local = user_path(cache_dir) / f"videos_{digest}"
    todo = []
    for path, _ in listing.videos:
        if _is_absolute_local(path):
            continue
        source, target = epath.Path(listing.root) / path, local / path
        if not target.exists() or target.stat().length != source.stat().length:
            todo.append((source, target))
    if todo:
        print(f"copying {len(todo)} videos from {listing.root} to {local} (the decoder reads "
              "local files)", flush=True)
        progress = Progress(len(todo))
        for i, (source, target) in enumerate(todo):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(source.read_bytes())
            tmp.replace(target)      # over a cached copy of an earlier version
            progress.update(i + 1)
        progress.close()
    return str(local)
