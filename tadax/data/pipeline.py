"""tf.data input pipelines: host-sharded, deterministic, restartable training and
complete, padded evaluation over prepared TFRecord shards.

Training (`build_train_iterator`): the global batch is assembled from K
reader streams (`num_streams`: gcd(global batch, shard files) by default);
stream k reads shard files k, k+K, ... (every K-th record when there are fewer
files than streams), shuffles file order and records per epoch with seeds
from (seed, k, epoch), and fills positions [k B/K, (k+1) B/K) of every global
batch; its clip number g is sampled and augmented with the stateless seed
(seed, k, g). Host p of P owns streams [p K/P, (p+1) K/P), i.e. exactly its
slice of each global batch. So the global batch sequence is a function of the
seed alone, the same on 1 host or P (whenever P divides K), and a run resumed
at step s skips s B/K raw records per stream (whole epochs without reading
them) and sees exactly the batches an uninterrupted run saw.

Evaluation (`build_eval_iterator`): host p of P evaluates the p-th of P
contiguous blocks of the split's videos (in shard order; sizes differ by at
most one) and opens only the shard files holding them (`eval_reads`), so a
host's eval input does not grow with the host count; every view of every
video appears exactly once over all hosts; all hosts yield the same number of
batches, the last ones padded with `mask` False.
"""

import dataclasses
import functools
import json
import math
import os
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tadax.data import augment, class_list, records, sampling, tfds_source, views
from tadax.data.record_format import META_DIR
from tadax.paths import user_path

# Something-Something V2 classes that name a direction: (left version, right version).
SSV2_LEFT_RIGHT = ((86, 87), (93, 94), (166, 167))


def _as_written(fn):
    """A per-example function traced as written, without AutoGraph's rewrite: the
    pipeline's functions branch with tf.cond/tf.switch_case already, and converting them
    cost every process ~1-2 s of start-up per iterator."""
    return tf.autograph.experimental.do_not_convert(fn)


def resolve_data_dir(data_cfg) -> str:
    """The folder of shards (local or gs://...): `data_dir`, the prepared TFDS builder
    `tfds_name` (under TFDS `data_dir`), or the synthetic dataset (generated on first use)."""
    if data_cfg.tfds_name:
        return tfds_source.builder_dir(data_cfg.tfds_name, _tfds_data_dir(data_cfg))
    if data_cfg.data_dir:
        return str(user_path(data_cfg.data_dir))
    if data_cfg.dataset == "synthetic":
        # The one call from the online pipeline into preparation (offline): the synthetic
        # set is generated and prepared on first use, then read like any prepared data.
        from tadax.prepare import synthetic
        return synthetic.ensure_synthetic(data_cfg)
    raise ValueError(f"data.data_dir is empty for dataset {data_cfg.dataset!r}: point it at the "
                     "folder written by `python -m tadax.prepare`")


def _tfds_data_dir(data_cfg) -> Optional[str]:
    return os.path.expanduser(data_cfg.data_dir) if data_cfg.data_dir else None


def dataset_class_names(data_cfg) -> Optional[List[str]]:
    """The class names written beside the shards (`classes.txt`, index order), or None."""
    path = user_path(resolve_data_dir(data_cfg)) / "classes.txt"
    return class_list.read_classes(path) if path.is_file() else None


def _split_name(data_cfg, split: str) -> str:
    """'train' / 'val' resolve through the config's split names; anything else is used as is."""
    return {"train": data_cfg.train_split, "val": data_cfg.val_split}.get(split, split)


@functools.lru_cache(maxsize=64)
def _records_per_file(path: str) -> int:
    shard = user_path(path)
    meta = shard.parent / META_DIR / (shard.name + ".json")
    if meta.is_file():
        return int(json.loads(meta.read_text())["written"])
    return records.count_records([path])


def _shards(data_cfg, split: str) -> Dict[str, int]:
    """{shard path: number of records} of `split`, in shard order (DMVR or TFDS layout)."""
    name = _split_name(data_cfg, split)
    if data_cfg.tfds_name:
        return tfds_source.split_shards(data_cfg.tfds_name, _tfds_data_dir(data_cfg), name)
    return {f: _records_per_file(f) for f in records.shard_files(resolve_data_dir(data_cfg), name)}


def _parse(data_cfg, serialized):
    """One record of the configured layout -> the dict of `records.parse`."""
    return tfds_source.parse(serialized) if data_cfg.tfds_name else records.parse(serialized)


def num_examples(data_cfg, split: str) -> int:
    """Number of videos in `split` ('train', 'val' or a shard name prefix)."""
    return sum(_shards(data_cfg, split).values())


def _hosts(process_index: Optional[int], process_count: Optional[int]):
    if process_index is None or process_count is None:
        import jax
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return process_index, process_count


def _per_host(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} is not divisible by "
                         f"{process_count} hosts")
    return global_batch_size // process_count


def _options(data_cfg) -> tf.data.Options:
    opts = tf.data.Options()
    opts.deterministic = True
    opts.experimental_optimization.map_parallelization = True
    return opts


def _parallel(data_cfg) -> int:
    return tf.data.AUTOTUNE if data_cfg.num_parallel_calls < 0 else data_cfg.num_parallel_calls


@dataclasses.dataclass(frozen=True)
class _Stream:
    index: int
    files: List[str]
    record_shard: bool      # True: all files, keep records index, index + K, ... of the common order
    epoch_len: int          # records per epoch in this stream


def num_streams(data_cfg, global_batch_size: int, num_files: int, process_count: int) -> int:
    """K, the number of training reader streams: `data.num_streams`, or gcd(batch, files).

    K must divide the global batch and be a multiple of the host count; when the
    automatic value is not, it becomes a multiple of the host count (and the data
    order then depends on the host count).
    """
    b, p = global_batch_size, process_count
    if data_cfg.num_streams:
        k = data_cfg.num_streams
        if b % k or k % p:
            raise ValueError(f"data.num_streams={k} must divide the global batch {b} and be a "
                             f"multiple of the {p} hosts")
        return k
    k = math.gcd(b, num_files)
    if k % p:
        k = p * math.gcd(b // p, max(1, num_files // p))
    return k


def _streams(shards: Dict[str, int], k: int) -> List[_Stream]:
    files = list(shards)
    if len(files) >= k:
        return [_Stream(i, files[i::k], False, sum(shards[f] for f in files[i::k]))
                for i in range(k)]
    total = sum(shards.values())
    return [_Stream(i, files, True, len(range(i, total, k))) for i in range(k)]


def _stream_seed(seed: int, stream: int) -> int:
    """A 31-bit id of (seed, stream): the first word of the stream's per-clip seeds."""
    return int(np.random.default_rng([seed, stream]).integers(0, 2 ** 31 - 1))


def _stream_records(stream: _Stream, data_cfg, seed: int, k: int, start: int) -> tf.data.Dataset:
    """(record, ordinal, stream index) of `stream` from its `start`-th record on, forever."""
    sid = _stream_seed(seed, stream.index)
    order_seed = _stream_seed(seed, k) if stream.record_shard else sid
    files = tf.constant(stream.files)
    cycle = max(1, min(data_cfg.cycle_length, len(stream.files)))
    buffer = max(1, data_cfg.shuffle_buffer // k)

    def epoch(e):
        keys = tf.random.stateless_uniform([len(stream.files)],
                                           tf.stack([tf.constant(order_seed, tf.int64), e]))
        ds = tf.data.Dataset.from_tensor_slices(tf.gather(files, tf.argsort(keys)))
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=cycle, block_length=1,
                           num_parallel_calls=cycle, deterministic=True)
        if stream.record_shard:
            ds = ds.shard(k, stream.index)
        return ds.shuffle(buffer, seed=e * 1_000_003 + sid + 1)

    first_epoch, within = divmod(start, stream.epoch_len)
    ds = tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(epoch).skip(within)
    return tf.data.Dataset.zip(ds, tf.data.Dataset.counter(start=start),
                               tf.data.Dataset.from_tensors(tf.constant(sid, tf.int64)).repeat())


def _swap_table(num_classes: int) -> tf.Tensor:
    table = np.arange(num_classes, dtype=np.int32)
    for a, b in SSV2_LEFT_RIGHT:
        if b < num_classes:
            table[a], table[b] = b, a
    return tf.constant(table)


def _train_example(serialized, ordinal, data_cfg, stream_id):
    """One record -> {'video': (T, S, S, 3), 'label': ()}, clip `ordinal` of stream `stream_id`."""
    ex = _parse(data_cfg, serialized)
    seed = tf.stack([tf.cast(stream_id, tf.int64), tf.cast(ordinal, tf.int64)])
    s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    idx = sampling.clip_indices(data_cfg, ex["num_frames"], ex["fps"], seed=s[0])
    if data_cfg.shuffle_frames:
        idx = tf.gather(idx, sampling.shuffle_order(data_cfg.num_frames, s[1]))
    frames, flipped = augment.train_clip(tf.gather(ex["frames"], idx), data_cfg, s[2])
    label = ex["label"]
    if data_cfg.dataset == "ssv2" and data_cfg.ssv2_flip_mode != "off":
        table = _swap_table(data_cfg.num_classes)
        if data_cfg.ssv2_flip_mode == "mirror":
            swap = flipped
        elif data_cfg.ssv2_flip_mode == "original":
            # The original's second flip: mirrors again and swaps on its own coin.
            swap = tf.random.stateless_uniform([], s[3]) < 0.5
            frames = tf.cond(swap, lambda: tf.reverse(frames, axis=[2]), lambda: frames)
        else:
            raise ValueError(f"data.ssv2_flip_mode={data_cfg.ssv2_flip_mode!r}: "
                             "'mirror', 'original' or 'off'")
        label = tf.where(swap, tf.gather(table, label), label)
    return {"video": views.normalize(frames, data_cfg), "label": label}


def train_dataset(data_cfg, *, global_batch_size: int, seed: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
    """The infinite host-local training `tf.data.Dataset` of batches
    `{'video': (B_host, T, S, S, 3), 'label': (B_host,) int32}` from step `start_step`."""
    pi, pc = process_index, process_count
    batch = _per_host(global_batch_size, pc)
    shards = _shards(data_cfg, "train")
    k = num_streams(data_cfg, global_batch_size, len(shards), pc)
    streams = _streams(shards, k)
    per = global_batch_size // k
    mine = streams[pi * k // pc:(pi + 1) * k // pc]
    for st in mine:
        if st.epoch_len == 0:
            raise ValueError(f"training stream {st.index} of {k} has no videos: prepare more "
                             f"shards or set data.num_streams")
    sources = [_stream_records(st, data_cfg, seed, k, start_step * per) for st in mine]
    order = tf.data.Dataset.range(len(mine)).flat_map(
        lambda i: tf.data.Dataset.from_tensors(i).repeat(per)).repeat()
    ds = tf.data.Dataset.choose_from_datasets(sources, order)
    ds = ds.map(_as_written(lambda r, g, sid: _train_example(r, g, data_cfg, sid)),
                num_parallel_calls=_parallel(data_cfg), deterministic=True)
    ds = ds.batch(batch, drop_remainder=True)
    return ds.prefetch(data_cfg.prefetch).with_options(_options(data_cfg))


def build_train_iterator(data_cfg, *, global_batch_size: int, seed: int, start_step: int = 0,
                         process_index: Optional[int] = None,
                         process_count: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
    """Infinite numpy batches for this host: `{'video': (B_host, T, S, S, 3), 'label': (B_host,)
    int32}`, where B_host = global_batch_size / process_count, S = train_crop_size, dtype =
    data_cfg.dtype. Deterministic for (seed, start_step): resuming at step s gives the
    batches an uninterrupted run gives from step s. Mixup/cutmix is not applied here: the
    train step does it on device (`tadax/train/mixup.py`).
    """
    pi, pc = _hosts(process_index, process_count)
    ds = train_dataset(data_cfg, global_batch_size=global_batch_size, seed=seed,
                       start_step=start_step, process_index=pi, process_count=pc)
    return ds.as_numpy_iterator()


def _eval_clip(serialized, video_id, clip_idx, data_cfg, multi_view: bool):
    """Views of temporal clip `clip_idx` of one record -> a dict of (num_crops, ...) tensors."""
    ex = _parse(data_cfg, serialized)
    num_clips = data_cfg.num_clips if multi_view else 1
    num_crops = data_cfg.num_crops if multi_view else 1

    def get_frames(idx):
        if data_cfg.shuffle_frames:
            order = sampling.shuffle_order(
                data_cfg.num_frames, tf.stack([video_id, tf.cast(clip_idx, tf.int64)]))
            idx = tf.gather(idx, order)
        return augment.decode_all(tf.gather(ex["frames"], idx))

    clips = views.clip_views(get_frames, ex["num_frames"], ex["fps"], data_cfg, clip_idx,
                             num_clips, num_crops)
    n = num_crops
    return {"video": views.normalize(clips, data_cfg),
            "label": tf.fill([n], ex["label"]),
            "video_id": tf.fill([n], video_id),
            "filename": tf.fill([n], ex["filename"]),
            "view": tf.cast(clip_idx, tf.int32) * num_crops + tf.range(n, dtype=tf.int32),
            "mask": tf.ones([n], tf.bool)}


@dataclasses.dataclass(frozen=True)
class EvalReads:
    """What one host reads of an eval split: `files[j]` from its record `skips[j]` on,
    `takes[j]` records whose split positions start at `firsts[j]`; `videos` are the
    positions it evaluates (its contiguous block of the selected videos)."""
    files: List[str]
    skips: List[int]
    takes: List[int]
    firsts: List[int]
    videos: np.ndarray


def _host_block(n: int, process_index: int, process_count: int) -> range:
    """Host p's contiguous share of n items: sizes differ by at most one, the first hosts
    take the extra ones."""
    per, extra = divmod(n, process_count)
    start = process_index * per + min(process_index, extra)
    return range(start, start + per + (process_index < extra))


def eval_reads(shards: Dict[str, int], selected: np.ndarray, process_index: int,
               process_count: int) -> EvalReads:
    """Host p's reads of a split with `shards` ({file: records}, in order) to evaluate its
    block of `selected` (sorted split positions): only the files that hold its videos, each
    from the first to the last record it needs (a file shared with the previous host is
    read past that host's records, not decoded)."""
    block = _host_block(len(selected), process_index, process_count)
    videos = selected[block.start:block.stop]
    out = EvalReads([], [], [], [], videos)
    if not len(videos):
        return out
    lo, hi = int(videos[0]), int(videos[-1]) + 1
    start = 0
    for path, count in shards.items():
        first, last = max(lo, start), min(hi, start + count)
        if first < last:
            out.files.append(path)
            out.skips.append(first - start)
            out.takes.append(last - first)
            out.firsts.append(first)
        start += count
    return out


def _selected(total: int, split: str, video_ids: Optional[Sequence[int]]) -> np.ndarray:
    """The sorted split positions to evaluate: all of them, or `video_ids`."""
    if video_ids is None:
        return np.arange(total, dtype=np.int64)
    ids = np.unique(np.asarray(video_ids, np.int64))
    if ids.size and (ids.min() < 0 or ids.max() >= total):
        raise ValueError(f"video_ids outside [0, {total}) of split {split!r}")
    return ids


def host_eval_reads(data_cfg, split: str, process_index: int, process_count: int,
                    video_ids: Optional[Sequence[int]] = None) -> EvalReads:
    """What host p of P reads to evaluate `split` (or its `video_ids`); see `eval_reads`."""
    shards = _shards(data_cfg, split)
    selected = _selected(sum(shards.values()), split, video_ids)
    return eval_reads(shards, selected, process_index, process_count)


def eval_dataset(data_cfg, *, split: str, global_batch_size: int, multi_view: bool,
                 process_index: int = 0, process_count: int = 1,
                 video_ids: Optional[Sequence[int]] = None) -> tf.data.Dataset:
    """The finite host-local eval `tf.data.Dataset`; see `build_eval_iterator`."""
    pi, pc = process_index, process_count
    batch = _per_host(global_batch_size, pc)
    shards = _shards(data_cfg, split)
    total = sum(shards.values())
    selected = _selected(total, split, video_ids)
    reads = eval_reads(shards, selected, pi, pc)
    ds = tf.data.Dataset.from_tensor_slices((
        tf.constant(reads.files, tf.string), tf.constant(reads.skips, tf.int64),
        tf.constant(reads.takes, tf.int64), tf.constant(reads.firsts, tf.int64)))
    ds = ds.flat_map(lambda f, skip, take, first: tf.data.Dataset.zip(
        tf.data.Dataset.range(first, first + take),
        tf.data.TFRecordDataset(f).skip(skip).take(take)))
    if video_ids is not None:
        keep = np.zeros(total, bool)
        keep[selected] = True
        wanted = tf.constant(keep)
        ds = ds.filter(lambda i, r: tf.gather(wanted, i))
    per_video = views.num_views(data_cfg, multi_view)
    num_clips = data_cfg.num_clips if multi_view else 1
    mine = len(reads.videos) * per_video
    most = -(-len(selected) // pc) * per_video
    num_batches = -(-most // batch)
    ds = ds.flat_map(lambda i, r: tf.data.Dataset.range(num_clips).map(lambda k: (r, i, k)))
    ds = ds.map(_as_written(lambda r, i, k: _eval_clip(r, i, k, data_cfg, multi_view)),
                num_parallel_calls=_parallel(data_cfg), deterministic=True).unbatch()
    size = data_cfg.test_crop_size
    pad = {"video": tf.zeros([data_cfg.num_frames, size, size, 3],
                             tf.dtypes.as_dtype(data_cfg.dtype)),
           "label": tf.constant(0, tf.int32), "video_id": tf.constant(-1, tf.int64),
           "filename": tf.constant(b""), "view": tf.constant(-1, tf.int32),
           "mask": tf.constant(False)}
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(num_batches * batch - mine))
    ds = ds.batch(batch, drop_remainder=True)
    return ds.prefetch(data_cfg.prefetch).with_options(_options(data_cfg))


def build_eval_iterator(data_cfg, *, split: str, global_batch_size: int, multi_view: bool,
                        process_index: Optional[int] = None,
                        process_count: Optional[int] = None,
                        video_ids: Optional[Sequence[int]] = None
                        ) -> Iterator[Dict[str, np.ndarray]]:
    """Finite numpy batches for this host: `{'video': (B_host, T, S, S, 3), 'label': (B_host,)
    int32, 'video_id': (B_host,) int64, 'filename': (B_host,) bytes (the record's
    `video/filename`, b'' if it has none), 'view': (B_host,) int32, 'mask': (B_host,) bool}`.

    S = test_crop_size. `multi_view`: num_clips x num_crops views per video (view =
    clip * num_crops + crop), else the single centre view. Every view of every video is
    in exactly one host's batches once; every host yields the same number of batches;
    padding has mask False, video_id -1, filename b'', view -1. Host p evaluates the p-th
    contiguous block of the videos and reads only the files that hold them. `video_ids`:
    only these videos (positions in the split; the blocks are cut from them in split order).
    """
    pi, pc = _hosts(process_index, process_count)
    ds = eval_dataset(data_cfg, split=split, global_batch_size=global_batch_size,
                      multi_view=multi_view, process_index=pi, process_count=pc,
                      video_ids=video_ids)
    return ds.as_numpy_iterator()
