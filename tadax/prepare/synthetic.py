"""A synthetic video dataset whose classes differ only in the order of their frames.

Four motions, each in a forward and a time-reversed class: moving left to
right / right to left, moving down / up, growing / shrinking, appearing /
disappearing. A clip of the reversed class is a clip of the forward class
played backwards, so both classes of a pair have exactly the same distribution
of single frames (and of unordered sets of frames): a model blind to time
order stays at 50% within each pair. Objects are textured squares or discs
with random colours, sizes, positions and speeds over a random smooth
background.

`write_dataset` writes real `.mp4` files (PyAV, H.264) and Kinetics-layout CSVs;
`ensure_synthetic` generates and prepares it on first use, once (under a file
lock when the cache is local), and returns the folder of shards.
"""

import csv
import hashlib
import os
import tempfile
from typing import Dict, List, Tuple

import av
import numpy as np
from etils import epath

from tadax.data import class_list
from tadax.data.record_format import META_DIR
from tadax.paths import is_remote, user_path
from tadax.prepare import annotations
from tadax.prepare.encode import EncodeOptions

FORWARD_CLASSES = ("moving left to right", "moving down", "growing", "appearing")
REVERSED_CLASSES = ("moving right to left", "moving up", "shrinking", "disappearing")
CLASSES = tuple(sorted(FORWARD_CLASSES + REVERSED_CLASSES))
# (forward, reversed) class indices of each pair in the sorted class list.
PAIRS = tuple((CLASSES.index(f), CLASSES.index(r)) for f, r in zip(FORWARD_CLASSES, REVERSED_CLASSES))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(S, S, 3) float smooth random texture: a random colour +- 35 in a smooth 4x4 pattern."""
    grid = rng.uniform(70, 185, size=(1, 1, 3)) + rng.uniform(-35, 35, size=(4, 4, 3))
    coords = np.linspace(0, 3, size)
    i0 = np.floor(coords).astype(int).clip(0, 2)
    f = (coords - i0)[:, None]
    rows = grid[i0] * (1 - f[:, :, None]) + grid[i0 + 1] * f[:, :, None]        # (S, 4, 3)
    cols = rows[:, i0] * (1 - f[None, :, :]) + rows[:, i0 + 1] * f[None, :, :]  # (S, S, 3)
    return cols


def _object_sprite(rng: np.random.Generator, background_mean: np.ndarray):
    """(colour_a, colour_b, stripe period, disc?) of a textured object contrasting the background."""
    a = np.where(background_mean > 127, rng.uniform(0, 60, 3), rng.uniform(195, 255, 3))
    b = a * 0.6 + rng.uniform(0, 255, 3) * 0.4
    return a, b, int(rng.integers(2, 5)), bool(rng.integers(2))


def _draw(frame: np.ndarray, cx: float, cy: float, radius: float, sprite) -> None:
    """Paints the object centred at (cx, cy) with half-size `radius` into `frame` (S, S, 3)."""
    a, b, period, disc = sprite
    size = frame.shape[0]
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = xx - cx, yy - cy
    inside = (dx ** 2 + dy ** 2 <= radius ** 2) if disc else (
        (np.abs(dx) <= radius) & (np.abs(dy) <= radius))
    stripes = (np.floor((dx + dy) / period) % 2).astype(bool)
    frame[inside & stripes] = a
    frame[inside & ~stripes] = b


def forward_clip(rng: np.random.Generator, motion: int, frames: int, size: int) -> np.ndarray:
    """(F, S, S, 3) uint8 clip of forward motion `motion` (index into FORWARD_CLASSES)."""
    bg = _background(rng, size)
    sprite = _object_sprite(rng, bg.mean(axis=(0, 1)))
    t = np.linspace(0.0, 1.0, frames)
    r = rng.uniform(0.12, 0.2) * size
    span = rng.uniform(0.45, 0.7) * (size - 2 * r)
    lo = rng.uniform(r, size - r - span)
    other = rng.uniform(r, size - r)
    out = np.empty((frames, size, size, 3), np.float32)
    appear_at = rng.uniform(0.3, 0.7)
    centre = rng.uniform(0.4, 0.6) * size
    small, big = 0.07 * size, 0.3 * size
    for i in range(frames):
        frame = bg.copy()
        if motion == 0:
            _draw(frame, lo + span * t[i], other, r, sprite)
        elif motion == 1:
            _draw(frame, other, lo + span * t[i], r, sprite)
        elif motion == 2:
            _draw(frame, centre, centre, small + (big - small) * t[i], sprite)
        else:
            if t[i] >= appear_at:
                _draw(frame, lo + span / 2, other, r, sprite)
        out[i] = frame
    out += rng.normal(0.0, 3.0, size=out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def class_clip(rng: np.random.Generator, label_name: str, frames: int, size: int) -> np.ndarray:
    """(F, S, S, 3) uint8 clip of class `label_name` (a reversed class is a forward clip backwards)."""
    if label_name in FORWARD_CLASSES:
        return forward_clip(rng, FORWARD_CLASSES.index(label_name), frames, size)
    return forward_clip(rng, REVERSED_CLASSES.index(label_name), frames, size)[::-1]


def write_mp4(path: str, clip: np.ndarray, fps: int) -> None:
    """Writes (F, H, W, 3) uint8 RGB as an H.264 mp4 (near-lossless, one thread)."""
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = clip.shape[2], clip.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10", "threads": "1"}
        for frame in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame),
                                                                   format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_dataset(root: str, splits: Dict[str, int], *, frames: int = 16, size: int = 32,
                  fps: int = 8, seed: int = 0) -> Dict[str, str]:
    """Writes `root/videos/SPLIT/*.mp4` and Kinetics-layout `root/SPLIT.csv`; returns {split: csv}.

    Classes are balanced and the clips are a function of (seed, split, index) only.
    Files are named `ID_START_END.mp4` as Kinetics clips are (START=0, END=duration).
    """
    duration = int(np.ceil(frames / fps))
    out = {}
    for split_no, (split, count) in enumerate(sorted(splits.items())):
        folder = os.path.join(root, "videos", split)
        os.makedirs(folder, exist_ok=True)
        rows: List[Tuple] = []
        for i in range(count):
            label = CLASSES[i % len(CLASSES)]
            rng = np.random.default_rng([seed, split_no, i])
            vid = f"{split}{i:06d}"
            write_mp4(os.path.join(folder, f"{vid}_000000_{duration:06d}.mp4"),
                      class_clip(rng, label, frames, size), fps)
            rows.append((label, vid, 0, duration, split))
        path = os.path.join(root, f"{split}.csv")
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            writer.writerows(rows)
        out[split] = path
    return out


def dataset_dir(data_cfg) -> str:
    """The cache folder (local or gs://...) of the synthetic dataset described by
    `data_cfg.synthetic`."""
    s = data_cfg.synthetic
    key = (f"v2-{s.num_train}-{s.num_val}-{s.frames}-{s.size}-{s.fps}-{s.seed}-{s.num_shards}-"
           f"{data_cfg.train_split}-{data_cfg.val_split}")
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    name = f"synthetic_{s.num_train}x{s.frames}x{s.size}_{digest}"
    return str(user_path(data_cfg.cache_dir) / name)


def _build(data_cfg, folder: str, quiet: bool) -> None:
    """Generates the videos and CSVs in the local `folder` and prepares them there as shards,
    `classes.txt` written last."""
    from tadax.prepare import splits   # here: TensorFlow, which write_dataset does not need

    s = data_cfg.synthetic
    csvs = write_dataset(folder, {data_cfg.train_split: s.num_train, data_cfg.val_split: s.num_val},
                         frames=s.frames, size=s.size, fps=s.fps, seed=s.seed)
    for split, csv_path in csvs.items():
        entries, problems = annotations.kinetics_csv(
            csv_path, os.path.join(folder, "videos", split), CLASSES)
        summary = splits.prepare_split(entries, problems, out_dir=folder, name=split,
                                       num_shards=s.num_shards, opts=EncodeOptions(), quiet=quiet)
        if summary["num_skipped"]:
            raise RuntimeError(f"synthetic data: {summary['num_skipped']} videos failed; "
                               f"see {folder}/{split}-report.txt")
    class_list.write_classes(os.path.join(folder, "classes.txt"), CLASSES)


def _upload(folder: epath.Path, target: epath.Path) -> None:
    """Copies the prepared shards and their metadata (not the source videos) to `target`,
    `classes.txt` last: its presence marks the copy complete."""
    files = [f for f in folder.iterdir() if f.is_file() and f.name != "classes.txt"]
    files += list((folder / META_DIR).iterdir())
    (target / META_DIR).mkdir(parents=True, exist_ok=True)
    for f in files + [folder / "classes.txt"]:
        f.copy(target / f.relative_to(folder).as_posix(), overwrite=True)


def ensure_synthetic(data_cfg, quiet: bool = True) -> str:
    """Generates and prepares the synthetic dataset once; returns its folder of shards.

    `classes.txt` in the folder marks it complete. Local cache: one process
    generates, under a file lock, into a temporary folder renamed into place
    when complete. gs:// cache (no locks or directory renames there): each
    process that finds it incomplete generates locally and copies the shards
    up, `classes.txt` last; concurrent writers write identical bytes (the data
    is a function of the config), so the result is the same whoever wins.
    """
    import filelock

    target = user_path(dataset_dir(data_cfg))
    if (target / "classes.txt").is_file():
        return str(target)
    if is_remote(target):
        with tempfile.TemporaryDirectory() as tmp:
            _build(data_cfg, tmp, quiet)
            _upload(user_path(tmp), target)
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(f"{target}.lock"):
        if (target / "classes.txt").is_file():
            return str(target)
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        tmp.rmtree(missing_ok=True)
        _build(data_cfg, str(tmp), quiet)
        tmp.rename(target)
    return str(target)
