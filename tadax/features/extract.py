"""The library of `python -m tadax.features` (see the package docstring): features of the
videos of a prepared split or a folder, written to resumable `.npz` shards."""

import concurrent.futures
import dataclasses
import functools
import json
import os
import sys
import tempfile
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import Mesh

from tadax.data import views as views_lib
from tadax.paths import write_npz
from tadax.progress import Progress
from tadax.train.sharding import BATCH_AXES, batch_sharding

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")
SETTINGS_FILE = "features.json"


def shard_path(output: epath.Path, index: int, count: int) -> epath.Path:
    """`OUTPUT/features-00003-of-00020.npz`."""
    return output / f"features-{index:05d}-of-{count:05d}.npz"


def num_shards(num_videos: int, videos_per_shard: int) -> int:
    return max(1, -(-num_videos // videos_per_shard))


def shard_videos(index: int, num_videos: int, videos_per_shard: int) -> range:
    """Video ids of output shard `index`."""
    return range(index * videos_per_shard, min((index + 1) * videos_per_shard, num_videos))


def pending_shards(output: epath.Path, num_videos: int, videos_per_shard: int,
                   process_index: int, process_count: int) -> List[int]:
    """This host's shards (index mod process_count = process_index) not yet written."""
    count = num_shards(num_videos, videos_per_shard)
    return [j for j in range(process_index, count, process_count)
            if not shard_path(output, j, count).exists()]


def list_videos(folder: epath.Path) -> List[epath.Path]:
    """The video files under `folder` (any depth, by suffix), sorted by relative path."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--videos {folder}: not a folder")
    files = [root / name for root, _, names in folder.walk() for name in names
             if os.path.splitext(name)[1].lower() in VIDEO_SUFFIXES]
    if not files:
        raise FileNotFoundError(f"--videos {folder}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    return sorted(files, key=lambda p: str(p.relative_to(folder)))


def clip_data_config(data_cfg: ml_collections.ConfigDict,
                     model_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The recipe's data settings with the clip length and crop of the loaded model."""
    data = ml_collections.ConfigDict(data_cfg.to_dict())
    data.num_frames = model_cfg.num_frames
    if data.test_crop_size < model_cfg.image_size or model_cfg.family == "tadaformer":
        data.test_crop_size = model_cfg.image_size
        data.test_scale = max(data.test_scale, model_cfg.image_size)
    return data


def local_mesh() -> Mesh:
    """A ('data', 'fsdp') mesh over this host's devices only: hosts never wait for each other."""
    return Mesh(np.asarray(jax.local_devices()).reshape(-1, 1), BATCH_AXES)


@functools.lru_cache(maxsize=8)
def features_step(model, mesh: Mesh, pre_pool: bool) -> Callable:
    """Jitted `(variables, video (B, T, H, W, 3)) -> pooled (B, D)` or `(pooled, pre-pool)`,
    batch-split over `mesh`; see `VideoClassifier.features`."""
    def step(variables, video):
        return model.apply(variables, video, pre_pool=pre_pool, method=model.features)

    return jax.jit(step, out_shardings=batch_sharding(mesh))


@dataclasses.dataclass
class _Video:
    filename: str
    label: int
    views: Dict[int, Tuple[np.ndarray, Optional[np.ndarray]]]


class ShardAssembler:
    """Collects per-view features and writes each output shard once all its videos are in.

    add(): one view's pooled features (and pre-pool features); skip(): a video
    that could not be read (listed in the shard's `skipped`). Shard arrays:
    `features` (n, D) ('mean') or (n, V, D) ('all'), `pre_pool` likewise with
    the pre-pool shape, `video_id` (n,) int64, `label` (n,) int64 (-1 without
    labels), `filename` (n,) str, `skipped` (k,) str.
    """

    def __init__(self, output: epath.Path, shards: Sequence[int], num_videos: int,
                 videos_per_shard: int, views_per_video: int, aggregate: str):
        self.output, self.num_videos, self.per_shard = output, num_videos, videos_per_shard
        self.count = num_shards(num_videos, videos_per_shard)
        self.views_per_video, self.aggregate = views_per_video, aggregate
        self.open = {j: set(shard_videos(j, num_videos, videos_per_shard)) for j in shards}
        self.videos: Dict[int, _Video] = {}
        self.skipped: Dict[int, str] = {}
        self.written: List[int] = []
        self.num_skipped = 0

    def _shard_of(self, video_id: int) -> int:
        j = video_id // self.per_shard
        if j not in self.open:
            raise ValueError(f"video {video_id} belongs to no shard of this run")
        return j

    def add(self, video_id: int, view: int, filename: str, label: int,
            pooled: np.ndarray, pre: Optional[np.ndarray]) -> None:
        j = self._shard_of(video_id)
        video = self.videos.setdefault(video_id, _Video(filename, label, {}))
        if view in video.views:
            raise ValueError(f"view {view} of video {video_id} arrived twice")
        video.views[view] = (pooled, pre)
        if len(video.views) == self.views_per_video:
            self._done(j, video_id)

    def skip(self, video_id: int, filename: str) -> None:
        j = self._shard_of(video_id)
        self.skipped[video_id] = filename
        self.num_skipped += 1
        self._done(j, video_id)

    def _done(self, j: int, video_id: int) -> None:
        self.open[j].discard(video_id)
        if not self.open[j]:
            self._write(j)

    def _stack(self, video: _Video, part: int) -> np.ndarray:
        views = np.stack([video.views[v][part] for v in sorted(video.views)])
        return views.mean(0) if self.aggregate == "mean" else views

    def _write(self, j: int) -> None:
        ids = [i for i in shard_videos(j, self.num_videos, self.per_shard) if i in self.videos]
        videos = [self.videos.pop(i) for i in ids]
        arrays = {"video_id": np.asarray(ids, np.int64),
                  "label": np.asarray([v.label for v in videos], np.int64),
                  "filename": np.asarray([v.filename for v in videos], str),
                  "skipped": np.asarray([self.skipped.pop(i) for i in sorted(self.skipped)
                                         if i // self.per_shard == j], str)}
        if videos:
            arrays["features"] = np.stack([self._stack(v, 0) for v in videos])
            if videos[0].views[0][1] is not None:
                arrays["pre_pool"] = np.stack([self._stack(v, 1) for v in videos])
        final = shard_path(self.output, j, self.count)
        tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex}"
        write_npz(tmp, **arrays)
        tmp.rename(final)
        del self.open[j]
        self.written.append(j)

    def finish(self) -> None:
        """Raises if a shard of this run is still incomplete (views went missing)."""
        if self.open:
            left = {j: sorted(v)[:5] for j, v in self.open.items()}
            raise RuntimeError(f"shards {sorted(left)} are incomplete, e.g. videos {left}")


def check_settings(output: epath.Path, settings: Dict[str, Any]) -> None:
    """Writes `features.json`, or checks that the one there matches `settings`."""
    path = output / SETTINGS_FILE
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise ValueError(f"{path} was written with other settings ("
                             + ", ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now"
                                         for k in diff)
                             + "): use another --output or the same settings")
        return
    tmp = output / f".{SETTINGS_FILE}.tmp-{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(settings, indent=1))
    tmp.rename(path)


def _pad(rows: List[Dict[str, Any]], batch: int) -> Dict[str, np.ndarray]:
    """Rows `{'video', 'video_id', 'view', 'label', 'filename'}` -> a batch padded with mask False."""
    n = len(rows)
    video = np.stack([r["video"] for r in rows])
    out = {"video": np.concatenate([video, np.zeros((batch - n,) + video.shape[1:], video.dtype)]),
           "mask": np.arange(batch) < n}
    for key, fill in (("video_id", -1), ("view", -1), ("label", -1), ("filename", "")):
        out[key] = np.asarray([r[key] for r in rows] + [fill] * (batch - n))
    return out


def folder_batches(files: Sequence[epath.Path], folder: epath.Path, ids: Sequence[int],
                   data_cfg, multi_view: bool, batch: int, workers: int,
                   skip: Callable[[int, str], None]) -> Iterator[Dict[str, np.ndarray]]:
    """Padded batches of the evaluation views of `files[i]` for i in `ids`, as the eval
    iterator yields them; files that cannot be decoded are reported to `skip` and left out."""
    from tadax.data.video import VideoDecodeError, load_views

    def views_of(path: epath.Path) -> np.ndarray:
        if os.path.exists(os.fspath(path)):
            return load_views(os.fspath(path), data_cfg, multi_view=multi_view)
        with tempfile.NamedTemporaryFile(suffix=path.suffix) as local:
            local.write(path.read_bytes())
            local.flush()
            return load_views(local.name, data_cfg, multi_view=multi_view)

    rows: List[Dict[str, Any]] = []
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        window = 2 * max(1, workers)
        futures = {i: pool.submit(views_of, files[i]) for i in ids[:window]}
        for k, i in enumerate(ids):
            if k + window < len(ids):
                nxt = ids[k + window]
                futures[nxt] = pool.submit(views_of, files[nxt])
            name = str(files[i].relative_to(folder))
            try:
                views = futures.pop(i).result()
            except VideoDecodeError as e:
                print(f"\nskipped {e}", file=sys.stderr)
                skip(i, name)
                continue
            for v, clip in enumerate(views):
                rows.append({"video": clip, "video_id": i, "view": v, "label": -1,
                             "filename": name})
                if len(rows) == batch:
                    yield _pad(rows, batch)
                    rows = []
    if rows:
        yield _pad(rows, batch)


def extract(config: ml_collections.ConfigDict, *, checkpoint: str, output: str,
            split: Optional[str] = None, videos: Optional[str] = None,
            multi_view: bool = True, use_ema: bool = False,
            process_index: Optional[int] = None, process_count: Optional[int] = None
            ) -> Dict[str, Any]:
    """Writes this host's missing feature shards of `split` or of the folder `videos`.

    Returns a summary: `shards` (this host's, all), `written` (shard indices
    written now), `skipped` (videos that could not be read), `num_videos`.
    """
    from tadax.data import pipeline
    from tadax.train import evaluation

    if (split is None) == (videos is None):
        raise ValueError("give exactly one of a split (--split) or a folder (--videos)")
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if not 0 <= pi < pc:
        raise ValueError(f"--host_index {pi} not in [0, {pc})")
    fcfg = config.features
    if fcfg.videos_per_shard < 1:
        raise ValueError(f"config.features.videos_per_shard={fcfg.videos_per_shard}: must be >= 1")
    if fcfg.aggregate not in ("mean", "all"):
        raise ValueError(f"config.features.aggregate={fcfg.aggregate!r}: 'mean' or 'all'")
    mesh = local_mesh()
    batch = config.eval.batch_size
    if batch % mesh.size:
        raise ValueError(f"eval.batch_size={batch} must be a multiple of the {mesh.size} "
                         "local devices")
    if videos is not None:
        folder = epath.Path(videos)
        files = list_videos(folder)
        num_videos, source = len(files), {"videos": str(folder)}
    else:
        num_videos = pipeline.num_examples(config.data, split)
        source = {"split": split, "data_dir": pipeline.resolve_data_dir(config.data)}
    model, variables, model_cfg = evaluation.load_model(checkpoint, config, mesh, use_ema=use_ema)
    data_cfg = config.data if videos is None else clip_data_config(config.data, model_cfg)
    out = epath.Path(output)
    out.mkdir(parents=True, exist_ok=True)
    per_video = views_lib.num_views(data_cfg, multi_view)
    check_settings(out, dict(
        source, checkpoint=str(epath.Path(checkpoint).resolve()), use_ema=use_ema,
        num_videos=num_videos, videos_per_shard=fcfg.videos_per_shard,
        aggregate=fcfg.aggregate, pre_pool=fcfg.pre_pool, views_per_video=per_video,
        num_frames=data_cfg.num_frames, crop=data_cfg.test_crop_size))
    shards = pending_shards(out, num_videos, fcfg.videos_per_shard, pi, pc)
    assembler = ShardAssembler(out, shards, num_videos, fcfg.videos_per_shard, per_video,
                               fcfg.aggregate)
    ids = [i for j in shards for i in shard_videos(j, num_videos, fcfg.videos_per_shard)]
    mine = len(range(pi, num_shards(num_videos, fcfg.videos_per_shard), pc))
    print(f"{output}: {mine - len(shards)} of this host's {mine} shards already written; "
          f"{len(ids)} videos x {per_video} views to go", file=sys.stderr)
    if ids:
        if videos is not None:
            batches = folder_batches(files, folder, ids, data_cfg, multi_view, batch,
                                     fcfg.decode_workers, assembler.skip)
        else:
            batches = pipeline.build_eval_iterator(
                data_cfg, split=split, global_batch_size=batch, multi_view=multi_view,
                process_index=0, process_count=1, video_ids=ids)
        step = features_step(model, mesh, bool(fcfg.pre_pool))
        progress = Progress(len(ids), total_clips=len(ids) * per_video)
        clips = 0
        for b in batches:
            result = step(variables, jax.device_put(b["video"], batch_sharding(mesh)))
            pooled, pre = result if fcfg.pre_pool else (result, None)
            pooled = np.asarray(pooled, np.float32)
            pre = None if pre is None else np.asarray(pre, np.float32)
            for r in np.flatnonzero(b["mask"]):
                name = b["filename"][r]
                assembler.add(int(b["video_id"][r]), int(b["view"][r]),
                              name.decode() if isinstance(name, bytes) else str(name),
                              int(b["label"][r]), pooled[r], None if pre is None else pre[r])
            clips += int(b["mask"].sum())
            progress.update(clips // per_video, clips)
        progress.close()
    assembler.finish()
    return {"shards": shards, "written": assembler.written, "num_videos": num_videos,
            "skipped": assembler.num_skipped}
