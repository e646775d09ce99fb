"""`--mode prepare`: preparation's rate per core on Kinetics-like clips, beside the decoding-only
ceiling, and where a video's time goes.

Generates `--clips` H.264 clips per size (10 s at 30 fps, libx264 CRF 23, a
panning texture with sensor-like noise: Kinetics' sizes and frame rate; kept in
`--workdir`), then, on the same files:

* decoding only: PyAV decodes every frame with one FFmpeg thread (the ceiling);
* stages of one video in one thread, as a preparation worker runs them: decoding,
  conversion to JPEG's YCbCr planes at the stored size, JPEG encoding, and
  serialising and writing the record;
* a worker's whole job over all the clips as one shard (`encode_and_write_shard`,
  a Beam worker's unit of work; a local worker does the same for its piece):
  preparation's rate per core;
* whole `prepare_split` runs, wall time with start-ups: in this process (which keeps
  FFmpeg's threads), with a worker per core, and (`--beam`) with the Beam
  DirectRunner, the clips listed over again to give each worker
  `--videos-per-worker` videos. With local workers, the CPU time this process
  spends per video (starting workers, hearing their progress, renaming shards;
  here a shard per video) bounds the local path's rate however many cores there
  are.

Decoding, stages and the worker's job are CPU seconds of this process
(`time.process_time`), the least of `--rounds` repeats, so rates per core do not
depend on other processes. Writes `prepare_stages.png` (the stages per clip
size) into `--workdir`.
"""

import time
from typing import Callable, Dict, List, Sequence, Tuple

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from etils import epath
from PIL import Image

from tadax.prepare import record_bytes
from tadax.prepare.annotations import Entry
from tadax.prepare.encode import EncodeOptions, bt601_planes, planes_jpeg
from tadax.prepare.tfrecord_file import TFRecordFileWriter

SIZES = {"340x256": (340, 256), "1280x720": (1280, 720)}
SECONDS, FPS = 10, 30
STAGES = ("decode", "convert_resize", "jpeg", "write")
RATE_HEADERS = ("clips", "decoding only, per core", "prepare, per core", "ratio to decoding",
                "hours per 100k clips on 32 cores", "prepare, one process",
                "prepare, N workers", "Beam, N workers", "local path's bound")
STAGE_HEADERS = ("clips",) + tuple(f"{s}, CPU s per video" for s in STAGES)


def write_clip(path: str, width: int, height: int, seed: int) -> None:
    """A 10 s, 30 fps H.264 clip (CRF 23): a smooth texture panning 2 pixels a frame plus noise."""
    rng = np.random.default_rng(seed)
    frames = SECONDS * FPS
    coarse = rng.integers(0, 255, (height // 16 + 1, (width + 2 * frames) // 16 + 1, 3),
                          dtype=np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((width + 2 * frames, height),
                                                        Image.BILINEAR), np.float32)
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "fast"}
        for i in range(frames):
            noisy = texture[:, 2 * i:2 * i + width] + rng.normal(0, 3, (height, width, 1))
            frame = av.VideoFrame.from_ndarray(np.clip(noisy, 0, 255).astype(np.uint8),
                                               format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _least_cpu_seconds(run: Callable, repeats: int):
    """(least CPU seconds of this process over `repeats` calls of `run`, its last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.process_time()
        result = run()
        best = min(best, time.process_time() - start)
    return best, result


def decode_only(path: str, repeats: int) -> float:
    """CPU seconds to decode every frame of `path` with one thread, keeping none (the
    ceiling: no conversion, no frames held in memory)."""
    def run():
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            for _ in container.decode(stream):
                pass
    return _least_cpu_seconds(run, repeats)[0]


def _decoded_frames(path: str) -> list:
    """Every frame of `path`, decoded by PyAV with one FFmpeg thread, as a worker decodes."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        return list(container.decode(stream))


def stages(path: str, opts: EncodeOptions, out: str, repeats: int) -> Dict[str, float]:
    """CPU seconds of each preparation stage of one video in one thread (`STAGES`; decoding
    here keeps the frames for the next stage)."""
    decode, frames = _least_cpu_seconds(lambda: _decoded_frames(path), repeats)
    reformatter = VideoReformatter()
    convert, planes = _least_cpu_seconds(
        lambda: [bt601_planes(reformatter, f, opts.short_side) for f in frames], repeats)
    jpeg, jpegs = _least_cpu_seconds(
        lambda: [planes_jpeg(y, opts.jpeg_quality) for y in planes], repeats)

    def write():
        with TFRecordFileWriter(out) as writer:
            writer.write(record_bytes.sequence_example(
                jpegs, label=0, text="x", filename="v.mp4", start_us=0,
                end_us=SECONDS * 10 ** 6, fps=float(FPS)))
    return dict(zip(STAGES, (decode, convert, jpeg, _least_cpu_seconds(write, repeats)[0])))


def worker_seconds(paths: Sequence[str], opts: EncodeOptions, out: str, repeats: int) -> float:
    """CPU seconds per video of a worker's job, `encode_and_write_shard`, over `paths` as one
    shard (one FFmpeg thread, as in every worker)."""
    from tadax.prepare.shards import ShardJob, encode_and_write_shard

    job = ShardJob(0, out, out + ".json", tuple(Entry(path=p, label=0, text="x") for p in paths))
    seconds, meta = _least_cpu_seconds(lambda: encode_and_write_shard(job, opts), repeats)
    if meta["written"] != len(paths):
        raise RuntimeError(f"{out}: skipped {meta['skipped']}")
    return seconds / len(paths)


def end_to_end(paths: Sequence[str], out: str, opts: EncodeOptions, workers: int,
               beam_args=None) -> Tuple[float, float]:
    """(videos per second of wall time, CPU seconds of this process per video) of one
    `prepare_split` over `paths` (a shard per video) into a fresh folder, the start-up of
    worker processes or of the pipeline included."""
    from tadax.prepare.splits import prepare_split

    entries = [Entry(path=p, label=0, text="x") for p in paths]
    folder = epath.Path(out)
    for f in list(folder.glob("bench*")) + list(folder.glob("_meta/bench*")):
        f.unlink()
    start, cpu = time.perf_counter(), time.process_time()
    summary = prepare_split(entries, [], out_dir=out, name="bench", num_shards=len(paths),
                            opts=opts, workers=workers, quiet=True, beam_args=beam_args)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if summary["num_examples"] != len(paths):
        raise RuntimeError(f"{out}: {summary['num_skipped']} clips skipped; see bench-report.txt")
    return len(paths) / seconds, cpu / len(paths)


def clips(workdir: str, count: int) -> Dict[str, List[str]]:
    """{size name: `count` generated clip paths} under `workdir` (generated if missing)."""
    out = {}
    for name, (width, height) in SIZES.items():
        folder = epath.Path(workdir) / "prepare" / name
        folder.mkdir(parents=True, exist_ok=True)
        out[name] = []
        for i in range(count):
            path = folder / f"clip{i}.mp4"
            if not path.exists():
                write_clip(str(path), width, height, seed=i)
            out[name].append(str(path))
    return out


def measure(paths: Sequence[str], workdir: str, opts: EncodeOptions, cores: int, repeats: int,
            videos_per_worker: int, beam: bool) -> Dict[str, float]:
    """Every figure of one clip size (`RATE_HEADERS`, stage seconds)."""
    parts = [stages(p, opts, f"{workdir}/stage.tfrecord", repeats) for p in paths]
    r = {s: float(np.mean([p[s] for p in parts])) for s in STAGES}
    r["decode_only"] = float(np.mean([decode_only(p, repeats) for p in paths]))
    r["worker"] = worker_seconds(paths, opts, f"{workdir}/worker.tfrecord", repeats)
    r["one_process"] = end_to_end(paths, f"{workdir}/one", opts, 1)[0]
    repeated = list(paths) * -(-videos_per_worker * cores // len(paths))
    r["all_cores"], r["parent_cpu"] = end_to_end(repeated, f"{workdir}/all", opts, cores)
    if beam:
        r["beam"] = end_to_end(repeated, f"{workdir}/beam", opts, 1, beam_args=[
            "--runner", "DirectRunner", "--direct_num_workers", str(cores),
            "--direct_running_mode", "multi_processing"])[0]
    return r


def rate_row(name: str, r: Dict[str, float]) -> Tuple:
    """The `RATE_HEADERS` row of one clip size."""
    per_core = 1.0 / r["worker"]
    return (name, f"{1.0 / r['decode_only']:.3g} videos/s", f"{per_core:.3g} videos/s",
            f"{r['worker'] / r['decode_only']:.2g}x", f"{1e5 / (per_core * 32) / 3600:.2g}",
            f"{r['one_process']:.3g} videos/s", f"{r['all_cores']:.3g} videos/s",
            f"{r['beam']:.3g} videos/s" if "beam" in r else "-",
            f"{1.0 / r['parent_cpu']:.3g} videos/s")


def plot_stages(results: Dict[str, Dict[str, float]], path: str, opts: EncodeOptions) -> None:
    """Stacked bars: CPU seconds per video in each stage, per clip size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bottom = np.zeros(len(names))
    for stage in STAGES:
        values = np.array([results[n][stage] for n in names])
        ax.bar(names, values, bottom=bottom, label=stage)
        bottom += values
    ax.set_ylabel("CPU seconds per 10 s clip, one thread")
    ax.set_title(f"preparation stages (short side {opts.short_side}, "
                 f"JPEG q{opts.jpeg_quality})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
