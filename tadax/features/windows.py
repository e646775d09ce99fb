"""Features per window of every video of a folder, in the layout temporal-localisation
codebases read: one `.npy` per video and a JSON index.

  python -m tadax.features --checkpoint ckpt/tadaformer_b16_k400 --videos /data/thumos \\
      --output feats/thumos --window 16 --stride 4 --fps 30

Each video is cut into windows (`tadax.data.windows`: `--window` frames every
`--stride` frames, counted at the video's own rate or at `--fps`); each window
is one clip of the model's T frames, centre-cropped as the evaluation views
are, and its pooled backbone features (the head's input) are one row.

  OUTPUT/NAME.npy     (windows, D) float32, NAME the video's path under the
                      folder without its suffix
  OUTPUT/index.json   the settings (window, stride, fps, model frames, model),
                      and per video its file, rate, frame count, duration and
                      each window's start and end (seconds); unreadable videos
                      under 'skipped'
  OUTPUT/features.json  the settings; a re-run with others is refused
A video is finished when its `.npy` and its entry (`OUTPUT/.windows/NAME.json`)
are written, each under a temporary name and renamed, so a re-run computes only
the videos not finished. Host p of P takes the videos i with i mod P = p;
`index.json` is written by whichever host finds every video finished.
"""

import json
import os
import sys
import uuid
from typing import Any, Dict, List, Optional

import jax
import ml_collections
import numpy as np
from etils import epath

from tadax.features import extract as features_lib
from tadax.data import windows as windows_lib
from tadax.progress import Progress
from tadax.train.sharding import batch_sharding

INDEX_FILE = "index.json"
ENTRIES = ".windows"


def video_names(files: List[epath.Path], folder: epath.Path) -> List[str]:
    """Each file's path under `folder` without its suffix (its `.npy`'s name); two files
    that differ only in suffix are refused."""
    names = [os.path.splitext(str(f.relative_to(folder)))[0] for f in files]
    seen: Dict[str, epath.Path] = {}
    for name, f in zip(names, files):
        if name in seen:
            raise ValueError(f"--videos {folder}: {seen[name].name} and {f.name} would both be "
                             f"{name}.npy; rename one")
        seen[name] = f
    return names


def _write(path: epath.Path, data: bytes) -> None:
    """Writes `data` under a temporary name beside `path`, then renames it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    tmp.write_bytes(data)
    tmp.replace(path)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def entry_path(out: epath.Path, name: str) -> epath.Path:
    return out / ENTRIES / f"{name}.json"


def finished(out: epath.Path, name: str) -> bool:
    """Whether video `name` is done: its entry written, and its `.npy` unless it was skipped."""
    path = entry_path(out, name)
    return path.exists() and ((out / f"{name}.npy").exists()
                              or "skipped" in json.loads(path.read_text()))


def write_index(out: epath.Path, names: List[str], settings: Dict[str, Any]) -> bool:
    """Writes `index.json` from the finished videos' entries; False (nothing written)
    while some video is not finished."""
    videos, skipped = {}, {}
    for name in names:
        if not finished(out, name):
            return False
        entry = json.loads(entry_path(out, name).read_text())
        if "skipped" in entry:
            skipped[name] = entry["skipped"]
        else:
            videos[name] = entry
    _write(out / INDEX_FILE, json.dumps(dict(settings, videos=videos, skipped=skipped),
                                        indent=1).encode())
    return True


def extract_windows(config: ml_collections.ConfigDict, *, checkpoint: str, output: str,
                    videos: str, window: Optional[int] = None, stride: Optional[int] = None,
                    fps: Optional[float] = None, use_ema: bool = False,
                    process_index: Optional[int] = None, process_count: Optional[int] = None
                    ) -> Dict[str, Any]:
    """Writes the per-window features of this host's unfinished videos of the folder `videos`.

    Returns a summary: `written` (names of the videos whose features were written
    now), `skipped` (names of those found unreadable now), `num_videos`, `index`
    (whether index.json was written).
    """
    from tadax.train import evaluation

    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if not 0 <= pi < pc:
        raise ValueError(f"--host_index {pi} not in [0, {pc})")
    if config.features.pre_pool:
        raise ValueError("config.features.pre_pool=True: per-window features are the pooled "
                         "features only")
    folder = epath.Path(videos)
    files = features_lib.list_videos(folder)
    names = video_names(files, folder)
    mesh = features_lib.local_mesh()
    batch = config.eval.batch_size
    if batch % mesh.size:
        raise ValueError(f"eval.batch_size={batch} must be a multiple of the {mesh.size} "
                         "local devices")
    model, variables, model_cfg = evaluation.load_model(checkpoint, config, mesh, use_ema=use_ema)
    data_cfg = features_lib.clip_data_config(config.data, model_cfg)
    spec = windows_lib.window_spec(data_cfg, model_cfg.num_frames, window, stride, fps)
    out = epath.Path(output)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(
        folder=str(folder), num_videos=len(files), window=spec.window, stride=spec.stride,
        fps=spec.fps or None, model_frames=spec.num_frames, test_scale=data_cfg.test_scale,
        crop=data_cfg.test_crop_size, checkpoint=str(epath.Path(checkpoint).resolve()),
        use_ema=use_ema, arch=model_cfg.arch)
    features_lib.check_settings(out, settings)
    mine = list(range(pi, len(files), pc))
    todo = [i for i in mine if not finished(out, names[i])]
    rate = f"{spec.fps:g} fps" if spec.fps else "each video's own rate"
    print(f"{output}: {len(mine) - len(todo)} of this host's {len(mine)} videos already done; "
          f"{len(todo)} to go, windows of {spec.window} frames every {spec.stride} at {rate}",
          file=sys.stderr)
    written: List[str] = []
    skipped: List[str] = []
    if todo:
        step = features_lib.features_step(model, mesh, False)
        items = windows_lib.stream_window_clips(
            [(i, str(files[i])) for i in todo], spec, data_cfg,
            workers=config.features.decode_workers, max_pending=2 * batch)
        rows: Dict[int, List[np.ndarray]] = {}
        spans: Dict[int, List[List[float]]] = {}
        progress = Progress(len(todo))
        num_windows = 0
        for clips, array, ends in windows_lib.window_batches(items, batch):
            if clips:
                feats = np.asarray(step(variables, jax.device_put(array, batch_sharding(mesh))),
                                   np.float32)
                for clip, row in zip(clips, feats):
                    rows.setdefault(clip.video, []).append(row)
                    spans.setdefault(clip.video, []).append([clip.start, clip.end])
                num_windows += len(clips)
            for end in ends:
                i, name = end.video, names[end.video]
                source = str(files[i].relative_to(folder))
                if isinstance(end, windows_lib.VideoFailed):
                    print(f"\nskipped {end.error}", file=sys.stderr)
                    entry: Dict[str, Any] = {"source": source, "skipped": end.error}
                    skipped.append(name)
                    rows.pop(i, None)
                    spans.pop(i, None)
                else:
                    array_i = np.stack(rows.pop(i))
                    times = np.asarray(spans.pop(i))
                    _write(out / f"{name}.npy", _npy_bytes(array_i))
                    entry = {"file": f"{name}.npy", "source": source, "fps": end.fps,
                             "num_frames": end.frames, "duration": end.frames / end.fps,
                             "num_windows": len(array_i), "feature_dim": int(array_i.shape[1]),
                             "start": times[:, 0].tolist(), "end": times[:, 1].tolist()}
                    written.append(name)
                _write(entry_path(out, name), json.dumps(entry).encode())
            progress.update(len(written) + len(skipped), num_windows)
        progress.close()
    index = write_index(out, names, settings)
    return {"written": written, "skipped": skipped, "num_videos": len(files),
            "index": index}
