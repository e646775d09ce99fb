"""What a prepared split was made from, so that a re-run into the same folder notices changes.

A fingerprint is a JSON-able dict: the options that change the stored bytes,
the sha256 of every annotation file's contents, and every video to prepare
with its label, size and modification time (a folder of JPEG
frames: the folder's own modification time, which moves when frames are added
or removed). `describe_change` turns two fingerprints into one line a user can
act on.
"""

import hashlib
from typing import Dict, Mapping, Sequence

from etils import epath

from tadax.prepare.annotations import Entry

VERSION = 1


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with epath.Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _video_signature(entry: Entry) -> list:
    """[size, mtime, label] of one entry (size 0 for a folder)."""
    stat = epath.Path(entry.path).stat()
    size = 0 if stat.is_directory else stat.length
    return [size, stat.mtime, entry.label]


def _relative(path: str, root: str) -> str:
    """`path` relative to `root` when below it (a moved dataset keeps its fingerprint)."""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path


def compute(entries: Sequence[Entry], annotation_files: Mapping[str, str], root: str,
            options: Mapping[str, object]) -> Dict:
    """The fingerprint of a split: `options` (each one that changes the bytes), the contents
    of `annotation_files` ({role, e.g. '--split train': path}) and the signature of every
    entry's video, by its path relative to `root`."""
    return {"version": VERSION,
            "options": dict(options),
            "annotations": {role: _file_sha256(path) for role, path in annotation_files.items()},
            "videos": {_relative(e.path, root): _video_signature(e) for e in entries}}


def describe_change(old: Dict, new: Dict) -> str:
    """What differs between two fingerprints, in a few words ('' when nothing does)."""
    if old.get("version") != new.get("version"):
        return f"fingerprint version {old.get('version')} -> {new.get('version')}"
    changes = []
    old_opts, new_opts = old["options"], new["options"]
    for key in sorted(set(old_opts) | set(new_opts)):
        if old_opts.get(key) != new_opts.get(key):
            changes.append(f"{key} {old_opts.get(key)!r} -> {new_opts.get(key)!r}")
    for role in sorted(set(old["annotations"]) | set(new["annotations"])):
        if old["annotations"].get(role) != new["annotations"].get(role):
            changes.append(f"the {role} file's contents changed")
    old_videos, new_videos = old["videos"], new["videos"]
    added = sorted(set(new_videos) - set(old_videos))
    removed = sorted(set(old_videos) - set(new_videos))
    modified = sorted(p for p in set(old_videos) & set(new_videos)
                      if old_videos[p] != new_videos[p])
    for what, paths in (("added", added), ("removed", removed), ("changed", modified)):
        if paths:
            more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
            changes.append(f"{len(paths)} video(s) {what} ({paths[0]}{more})")
    return "; ".join(changes)
