"""Dataset annotation layouts -> lists of `Entry` (one video each) plus the problems found.

Layouts: the official Kinetics CSV, the original repo's `kinetics400_{split}_list.txt`,
Something-Something V2 JSON (official and the original's `-with-label.json`),
Something-Something V1 (frame folders + CSV), and a generic `path,label` CSV.
Label indices always come from a fixed, sorted class list, never from the order
in which labels happen to appear. A line or entry that cannot be used (missing
file, unknown label, malformed value) becomes a `Problem` naming its line and
why, never an exception; only a file that cannot be read at all raises
`TextFileError` (`AnnotationError` when its text is not the layout). A split whose annotation file carries no labels at
all (a Kinetics CSV without a `label` column or with it empty on every row, the
SSv2 and SSv1 test lists)
is unlabelled: its entries have label `UNLABELLED` (-1) and empty text.
"""

import csv
import dataclasses
import io
import itertools
import json
import math
import os
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from tadax.data.class_list import TextFileError, read_classes, read_text, text_defect, text_lines

# Container extensions looked for when a layout names a video by its id; PyAV opens
# a file by probing its content, so any of these decodes when FFmpeg has the codec.
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".qt", ".3gp", ".3g2", ".mj2", ".webm", ".mkv",
                    ".mk3d", ".avi", ".divx", ".flv", ".f4v", ".wmv", ".asf", ".mpg", ".mpeg",
                    ".mpe", ".m1v", ".m2v", ".vob", ".ts", ".m2ts", ".mts", ".m2t", ".ogv",
                    ".ogg", ".mxf", ".nut", ".y4m", ".dv", ".rm", ".rmvb", ".h264", ".264",
                    ".hevc", ".h265")
UNLABELLED = -1
MALFORMED = "malformed annotation"       # how every skip for an unusable value begins
KINETICS_COLUMNS = ("youtube_id", "time_start", "time_end")


class AnnotationError(TextFileError):
    """An annotation or class-list file that cannot be read as its layout at all; the
    message (one line) names the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One video to prepare: a file (or a folder of JPEG frames) and its label
    (`UNLABELLED` with empty text in an unlabelled split); `name`, when set, is recorded
    as its file name instead of the file's base name (the generic layout's annotated path,
    which tells apart `a/1.mp4` and `b/1.mp4`)."""
    path: str
    label: int
    text: str
    name: str = ""

    @property
    def filename(self) -> str:
        """The name recorded with the video (`video/filename`)."""
        return self.name or os.path.basename(self.path)


@dataclasses.dataclass(frozen=True)
class Problem:
    """An annotation line or video that was skipped, and why; `source` is `file:line`,
    `file[index]` (JSON) or the video's path."""
    source: str
    reason: str


def _csv_rows(path: str) -> Iterator[Tuple[str, List[str], Optional[str]]]:
    """(source `path:N`, stripped fields, defect or None) for each non-empty CSV row."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    while True:
        line_no = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield f"{path}:{line_no}", [], f"malformed CSV ({e})"
            continue
        fields = [f.strip() for f in row]
        if not any(fields):
            continue
        defect = next(filter(None, map(text_defect, fields)), None)
        if defect is None and any("\n" in f or "\r" in f for f in fields):
            defect = "a quoted field spans lines (unbalanced quote?)"
        yield f"{path}:{line_no}", fields, defect


def _load_json(path: str):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not JSON ({e})") from None


def index_videos(root: str) -> Dict[str, str]:
    """{file stem: path} of the files under `root` (any depth) with a `VIDEO_EXTENSIONS`
    extension; the first found in sorted order wins."""
    out: Dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS:
                out.setdefault(stem, os.path.join(dirpath, name))
    return out


def _not_found(stem: str, root: str) -> str:
    return (f"video file not found: looked for {stem}.EXT under {root} (any depth), "
            f"EXT one of {' '.join(e[1:] for e in VIDEO_EXTENSIONS)}")


def _labelled(rows: Iterable[Tuple], classes: Sequence[str]) -> Tuple[List[Entry], List[Problem]]:
    """(source, label name or None if unlabelled, path or None, why the path is None[, the
    name to record]) rows -> entries and problems."""
    index = {name: i for i, name in enumerate(classes)}
    entries, problems = [], []
    for source, label, path, why_missing, *recorded in rows:
        name = recorded[0] if recorded else ""
        if label is not None and label not in index:
            problems.append(Problem(source, f"unknown label {label!r}"))
        elif path is None:
            problems.append(Problem(source, why_missing))
        elif label is None:
            entries.append(Entry(path=path, label=UNLABELLED, text="", name=name))
        else:
            entries.append(Entry(path=path, label=index[label], text=label, name=name))
    return entries, problems


def _seconds(column: str, value: str) -> Tuple[Optional[float], Optional[str]]:
    """A CSV time -> (seconds, None), or (None, why it is not a usable time)."""
    try:
        t = float(value)
    except ValueError:
        return None, f"{column} {value!r} is not a number"
    if not math.isfinite(t):
        return None, f"{column} {value!r} is not finite"
    if t < 0:
        return None, f"{column} {value!r} is negative"
    return t, None


def _kinetics_rows(csv_path: str) -> Iterator[Tuple[str, Optional[Tuple[Optional[str], str]],
                                                     Optional[str]]]:
    """(source, (label, file stem), None) per usable row of an official Kinetics CSV, or
    (source, None, why) per unusable one; label is None on every row of a CSV without
    labels (no `label` column, or one empty on every row: a test list). Raises
    `AnnotationError` if the first row is not a Kinetics header."""
    rows = _csv_rows(csv_path)
    first = next(rows, None)
    header = first[1] if first is not None and first[2] is None else []
    missing = [c for c in KINETICS_COLUMNS if c not in header]
    if missing:
        raise AnnotationError(
            f"{csv_path}: not a Kinetics CSV: its first line has no column {', '.join(missing)} "
            f"(expected label,{','.join(KINETICS_COLUMNS)},split)")
    col = {name: header.index(name) for name in (*KINETICS_COLUMNS, "label") if name in header}
    labelled = "label" in col and any(
        not defect and len(fields) > col["label"] and fields[col["label"]]
        for _, fields, defect in itertools.islice(_csv_rows(csv_path), 1, None))
    for source, fields, defect in rows:
        if defect:
            yield source, None, defect
            continue
        if len(fields) <= max(col.values()):
            yield source, None, f"{len(fields)} fields, the header has {len(header)}"
            continue
        label = fields[col["label"]] if labelled else None
        vid = fields[col["youtube_id"]]
        start, why = _seconds("time_start", fields[col["time_start"]])
        end, why_end = _seconds("time_end", fields[col["time_end"]])
        why = why or why_end
        if why is None and end <= start:
            why = f"time_end {end:g} is not after time_start {start:g}"
        if why is None and not vid:
            why = "empty youtube_id"
        if why is None and label == "":
            why = "empty label"
        if why:
            yield source, None, why
        else:
            yield source, (label, f"{vid}_{int(start):06d}_{int(end):06d}"), None


def kinetics_csv_labels(csv_paths: Sequence[str]) -> List[str]:
    """Sorted distinct labels of the usable rows of official Kinetics CSVs (the class list)."""
    labels = set()
    for path in csv_paths:
        labels.update(row[0] for _, row, _ in _kinetics_rows(path) if row and row[0] is not None)
    return sorted(labels)


def kinetics_csv(csv_path: str, video_root: str, classes: Sequence[str],
                 videos: Optional[Dict[str, str]] = None) -> Tuple[List[Entry], List[Problem]]:
    """Official Kinetics CSV (`label,youtube_id,time_start,time_end,split[,...]`; without
    labels, an unlabelled split); files are `ID_START_END.ext` (start/end
    zero-padded to 6 digits) anywhere under `video_root`."""
    videos = index_videos(video_root) if videos is None else videos
    rows, problems = [], []
    for source, row, why in _kinetics_rows(csv_path):
        if row is None:
            problems.append(Problem(source, f"{MALFORMED}: {why}"))
            continue
        label, stem = row
        rows.append((source, label, videos.get(stem), _not_found(stem, video_root)))
    entries, more = _labelled(rows, classes)
    return entries, problems + more


def kinetics_list(list_path: str, video_root: str, classes: Optional[Sequence[str]] = None
                  ) -> Tuple[List[Entry], List[Problem]]:
    """The original repo's `kinetics400_{split}_list.txt`: `relative/path label_index` lines."""
    entries, problems = [], []
    for source, line, defect in text_lines(list_path):
        parts = line.rsplit(None, 1)
        if defect:
            problems.append(Problem(source, f"{MALFORMED}: {defect}"))
            continue
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            problems.append(Problem(source, f"{MALFORMED}: expected 'path label_index', "
                                            f"got {line!r}"))
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


def _index(value) -> Optional[int]:
    """A JSON class index (integer, or a string of digits) -> int, else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def ssv2_classes(labels_json: str) -> List[str]:
    """SSv2 `labels.json` ({template: "index"}) -> names in index order. Raises
    `AnnotationError` if it is not such a JSON object with indices 0..N-1."""
    mapping = _load_json(labels_json)
    if not isinstance(mapping, dict) or not mapping:
        got = "an empty object" if mapping == {} else type(mapping).__name__
        raise AnnotationError(f"{labels_json}: expected a JSON object {{template: index}}, "
                              f"got {got}")
    index = {name: _index(i) for name, i in mapping.items()}
    bad = [name for name, i in index.items() if i is None]
    if bad:
        raise AnnotationError(f"{labels_json}: index of {bad[0]!r} is {mapping[bad[0]]!r}, "
                              "not an integer")
    names = sorted(index, key=index.get)
    if [index[n] for n in names] != list(range(len(names))):
        raise AnnotationError(f"{labels_json}: indices are not 0..{len(names) - 1}")
    return names


def _ssv2_label(item: dict, classes: Sequence[str]) -> Tuple[Optional[str], Optional[str]]:
    """An SSv2 annotation object -> (label name, None) or (None, why it has no usable label)."""
    if "label_idx" in item:
        idx = _index(item["label_idx"])
        if idx is None:
            return None, f"{MALFORMED}: 'label_idx' {item['label_idx']!r} is not an integer"
        if not 0 <= idx < len(classes):
            return None, f"label_idx {idx} out of range (0..{len(classes) - 1})"
        return classes[idx], None
    if "template" in item:
        if not isinstance(item["template"], str):
            return None, f"{MALFORMED}: 'template' {item['template']!r} is not a string"
        return item["template"].replace("[", "").replace("]", ""), None
    return None, f"{MALFORMED}: no 'template' or 'label_idx'"


def ssv2_json(annotation_json: str, video_root: str, classes: Sequence[str],
              videos: Optional[Dict[str, str]] = None) -> Tuple[List[Entry], List[Problem]]:
    """SSv2 `something-something-v2-{train,validation}.json` (`id`, `template`), the
    original repo's `...-with-label.json` (`id`, `label_idx`) or the test list (`id`
    only: an unlabelled split); files `ID.webm`/`ID.mp4`."""
    videos = index_videos(video_root) if videos is None else videos
    items = _load_json(annotation_json)
    if not isinstance(items, list):
        raise AnnotationError(f"{annotation_json}: expected a JSON list of {{\"id\": ...}} "
                              f"objects, got {type(items).__name__}")
    labelled = any(isinstance(it, dict) and ("template" in it or "label_idx" in it)
                   for it in items)
    rows, problems = [], []
    for i, item in enumerate(items):
        source = f"{annotation_json}[{i}]"
        if not isinstance(item, dict):
            problems.append(Problem(source, f"{MALFORMED}: expected an object, "
                                            f"got {type(item).__name__}"))
            continue
        vid = item.get("id")
        if isinstance(vid, bool) or not isinstance(vid, (str, int)) or str(vid).strip() == "":
            problems.append(Problem(source, f"{MALFORMED}: 'id' {vid!r} is not a video id"))
            continue
        label, why = _ssv2_label(item, classes) if labelled else (None, None)
        if why:
            problems.append(Problem(source, why))
            continue
        vid = str(vid).strip()
        rows.append((source, label, videos.get(vid), _not_found(vid, video_root)))
    entries, more = _labelled(rows, classes)
    return entries, problems + more


def ssv1_classes(labels_csv: str) -> List[str]:
    """SSv1 `something-something-v1-labels.csv`: one class a line, in index order."""
    return read_classes(labels_csv)


def ssv1_csv(annotation_csv: str, frames_root: str, classes: Sequence[str]
             ) -> Tuple[List[Entry], List[Problem]]:
    """SSv1 `something-something-v1-{train,validation}.csv` (`id;label`) or the test list
    (ids only: an unlabelled split); frames are JPEG folders `frames_root/ID/00001.jpg ...`."""
    lines = list(text_lines(annotation_csv))
    labelled = any(";" in line for _, line, _ in lines)
    rows, problems = [], []
    for source, line, defect in lines:
        vid, sep, label = (part.strip() for part in line.partition(";"))
        why = defect
        if why is None and (vid in ("", ".", "..") or "/" in vid or "\\" in vid):
            why = f"id {vid!r} is not a folder name"
        if why is None and labelled and not label:
            why = f"expected 'id;label', got {line!r}"
        if why:
            problems.append(Problem(source, f"{MALFORMED}: {why}"))
            continue
        folder = os.path.join(frames_root, vid)
        rows.append((source, label if labelled else None,
                     folder if os.path.isdir(folder) else None,
                     f"frame folder not found: {folder}"))
    entries, more = _labelled(rows, classes)
    return entries, problems + more


def generic_rows(csv_path: str) -> Iterator[Tuple[str, Optional[Tuple[str, str]], Optional[str]]]:
    """(source, (path, label), None) per usable row of a `path,label` CSV, or (source,
    None, why) per unusable one; a `path,label` header is skipped."""
    for n, (source, fields, defect) in enumerate(_csv_rows(csv_path)):
        if n == 0 and not defect and [f.lower() for f in fields[:2]] == ["path", "label"]:
            continue
        why = defect
        if why is None and (len(fields) < 2 or not fields[0]):
            why = f"expected 'path,label', got {','.join(fields)!r}"
        if why is None and not fields[1]:
            why = "empty label"
        yield (source, None, why) if why else (source, (fields[0], fields[1]), None)


def generic_csv_labels(csv_paths: Sequence[str]) -> List[str]:
    """The class list of generic `path,label` CSVs: sorted names, or `0..max` when every
    label is an integer (then labels are indices)."""
    labels = set()
    for path in csv_paths:
        labels.update(row[1] for _, row, _ in generic_rows(path) if row)
    if labels and all(l.isdigit() for l in labels):
        return [str(i) for i in range(max(int(l) for l in labels) + 1)]
    return sorted(labels)


def generic_csv(csv_path: str, video_root: str, classes: Sequence[str]
                ) -> Tuple[List[Entry], List[Problem]]:
    """A `path,label` CSV (optional header); paths relative to `video_root` or absolute,
    each recorded as written in the CSV."""
    rows, problems = [], []
    for source, row, why in generic_rows(csv_path):
        if row is None:
            problems.append(Problem(source, f"{MALFORMED}: {why}"))
            continue
        full = os.path.join(video_root, row[0])
        rows.append((source, row[1], full if os.path.exists(full) else None,
                     f"video file not found: {full}", row[0]))
    entries, more = _labelled(rows, classes)
    return entries, problems + more
