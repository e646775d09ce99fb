"""Dataset annotation layouts -> lists of `Entry` (one video each) plus the problems found.

Layouts: the official Kinetics CSV, the original repo's `kinetics400_{split}_list.txt`,
Something-Something V2 JSON (official and the original's `-with-label.json`),
Something-Something V1 (frame folders + CSV), and a generic `path,label` CSV.
Label indices always come from a fixed, sorted class list, never from the order
in which labels happen to appear. A line naming a missing file or an unknown
label becomes a `Problem`, not an exception.
"""

import csv
import dataclasses
import json
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from etils import epath

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One video to prepare: a file (or a folder of JPEG frames), its label and clip bounds."""
    path: str
    label: int
    text: str
    start_sec: Optional[float] = None   # clip bounds in the source, recorded as timestamps
    end_sec: Optional[float] = None
    trim: bool = False                  # True: keep only [start_sec, end_sec) of the file


@dataclasses.dataclass(frozen=True)
class Problem:
    """An annotation line or video that was skipped, and why."""
    source: str
    reason: str


def read_classes(path: str) -> List[str]:
    """Class names, one a line, in index order."""
    names = [line for line in epath.Path(path).read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate class names")
    return names


def write_classes(path: str, names: Sequence[str]) -> None:
    """Writes class names one a line (index order)."""
    epath.Path(path).write_text("".join(f"{n}\n" for n in names))


def index_videos(root: str) -> Dict[str, str]:
    """{file stem: path} of the video files under `root` (any depth); the first found wins."""
    out: Dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS:
                out.setdefault(stem, os.path.join(dirpath, name))
    return out


def _labelled(rows: Iterable[Tuple[str, str, Optional[str], dict]], classes: Sequence[str],
              ) -> Tuple[List[Entry], List[Problem]]:
    """(source, label name, path or None, extra Entry fields) rows -> entries and problems."""
    index = {name: i for i, name in enumerate(classes)}
    entries, problems = [], []
    for source, label, path, extra in rows:
        if label not in index:
            problems.append(Problem(source, f"unknown label {label!r}"))
        elif path is None:
            problems.append(Problem(source, "video file not found"))
        else:
            entries.append(Entry(path=path, label=index[label], text=label, **extra))
    return entries, problems


def kinetics_csv_labels(csv_paths: Sequence[str]) -> List[str]:
    """Sorted distinct labels of official Kinetics CSVs (the class list)."""
    labels = set()
    for path in csv_paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("label"):
                    labels.add(row["label"])
    return sorted(labels)


def kinetics_csv(csv_path: str, video_root: str, classes: Sequence[str],
                 videos: Optional[Dict[str, str]] = None) -> Tuple[List[Entry], List[Problem]]:
    """Official Kinetics CSV (`label,youtube_id,time_start,time_end,split[,...]`); files are
    `ID_START_END.ext` (start/end zero-padded to 6 digits) anywhere under `video_root`."""
    videos = index_videos(video_root) if videos is None else videos
    rows, problems = [], []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"label", "youtube_id", "time_start", "time_end"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path}: not a Kinetics CSV, missing columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            source = f"{csv_path}:{line}"
            try:
                start, end = float(row["time_start"]), float(row["time_end"])
            except (TypeError, ValueError):
                problems.append(Problem(source, f"bad time_start/time_end {row}"))
                continue
            stem = f"{row['youtube_id']}_{int(start):06d}_{int(end):06d}"
            rows.append((source, row["label"], videos.get(stem),
                         dict(start_sec=start, end_sec=end)))
    entries, more = _labelled(rows, classes)
    return entries, problems + more


def kinetics_list(list_path: str, video_root: str, classes: Optional[Sequence[str]] = None
                  ) -> Tuple[List[Entry], List[Problem]]:
    """The original repo's `kinetics400_{split}_list.txt`: `relative/path label_index` lines."""
    entries, problems = [], []
    with open(list_path) as f:
        for line_no, line in enumerate(f, start=1):
            source = f"{list_path}:{line_no}"
            parts = line.strip().rsplit(None, 1)
            if not line.strip():
                continue
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                problems.append(Problem(source, f"expected 'path label_index', got {line.strip()!r}"))
                continue
            label = int(parts[1])
            if label < 0 or (classes is not None and label >= len(classes)):
                problems.append(Problem(source, f"label index {label} out of range"))
                continue
            path = os.path.join(video_root, parts[0])
            if not os.path.isfile(path):
                problems.append(Problem(source, f"video file not found: {path}"))
                continue
            text = classes[label] if classes is not None else str(label)
            entries.append(Entry(path=path, label=label, text=text))
    return entries, problems


def ssv2_classes(labels_json: str) -> List[str]:
    """SSv2 `labels.json` ({template: "index"}) -> names in index order."""
    with open(labels_json) as f:
        mapping = json.load(f)
    names = sorted(mapping, key=lambda k: int(mapping[k]))
    if [int(mapping[n]) for n in names] != list(range(len(names))):
        raise ValueError(f"{labels_json}: indices are not 0..{len(names) - 1}")
    return names


def ssv2_json(annotation_json: str, video_root: str, classes: Sequence[str],
              videos: Optional[Dict[str, str]] = None) -> Tuple[List[Entry], List[Problem]]:
    """SSv2 `something-something-v2-{train,validation}.json` (`id`, `template`) or the
    original repo's `...-with-label.json` (`id`, `label_idx`); files `ID.webm`/`ID.mp4`."""
    videos = index_videos(video_root) if videos is None else videos
    with open(annotation_json) as f:
        items = json.load(f)
    rows, problems = [], []
    for i, item in enumerate(items):
        source = f"{annotation_json}[{i}]"
        vid = str(item.get("id", ""))
        if "label_idx" in item:
            idx = int(item["label_idx"])
            label = classes[idx] if 0 <= idx < len(classes) else f"#{idx}"
        elif "template" in item:
            label = item["template"].replace("[", "").replace("]", "")
        else:
            problems.append(Problem(source, "no 'template' or 'label_idx'"))
            continue
        rows.append((source, label, videos.get(vid), {}))
    entries, more = _labelled(rows, classes)
    return entries, problems + more


def ssv1_classes(labels_csv: str) -> List[str]:
    """SSv1 `something-something-v1-labels.csv`: one class a line, in index order."""
    return read_classes(labels_csv)


def ssv1_csv(annotation_csv: str, frames_root: str, classes: Sequence[str]
             ) -> Tuple[List[Entry], List[Problem]]:
    """SSv1 `something-something-v1-{train,validation}.csv` (`id;label`); frames are JPEG
    folders `frames_root/ID/00001.jpg ...`."""
    rows = []
    with open(annotation_csv) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            vid, _, label = line.strip().partition(";")
            folder = os.path.join(frames_root, vid)
            rows.append((f"{annotation_csv}:{line_no}", label,
                         folder if os.path.isdir(folder) else None, {}))
    return _labelled(rows, classes)


def generic_csv_labels(csv_paths: Sequence[str]) -> List[str]:
    """The class list of generic `path,label` CSVs: sorted names, or `0..max` when every
    label is an integer (then labels are indices)."""
    labels = set()
    for path in csv_paths:
        for _, _, label in _generic_rows(path):
            labels.add(label)
    if labels and all(l.isdigit() for l in labels):
        return [str(i) for i in range(max(int(l) for l in labels) + 1)]
    return sorted(labels)


def _generic_rows(csv_path: str):
    with open(csv_path, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or (line_no == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]):
                continue
            yield line_no, row[0].strip(), (row[1].strip() if len(row) > 1 else "")


def generic_csv(csv_path: str, video_root: str, classes: Sequence[str]
                ) -> Tuple[List[Entry], List[Problem]]:
    """A `path,label` CSV (optional header); paths relative to `video_root` or absolute."""
    rows = []
    for line_no, path, label in _generic_rows(csv_path):
        full = os.path.join(video_root, path)
        rows.append((f"{csv_path}:{line_no}", label, full if os.path.exists(full) else None, {}))
    return _labelled(rows, classes)
