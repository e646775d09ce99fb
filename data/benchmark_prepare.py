"""Preparation throughput: videos/s per core on Kinetics-like clips, beside the decode-only ceiling.

  python data/benchmark_prepare.py --clips 2                      # 340x256 and 1280x720, 10 s
  python data/benchmark_prepare.py --clips 4 --beam               # also the Beam DirectRunner

Generates `--clips` H.264 clips per size (10 s at 30 fps, libx264 CRF 23, a
panning texture with sensor-like noise: Kinetics' sizes and frame rate), then,
on the same files:

* decode only: PyAV decodes every frame with one FFmpeg thread, no conversion,
  resize or JPEG (the ceiling);
* stages of one video in one thread, as a preparation worker runs them: decoding,
  conversion/resize to JPEG's YCbCr planes (`bt601_planes`), JPEG encoding of the
  planes, and serialising and writing the record;
* a worker's whole job over all the clips, as one shard: `encode_and_write_shard`
  (a Beam worker's unit of work; a local worker does the same for its shard or piece
  of one), one FFmpeg thread: preparation's rate per core;
* end to end: `prepare_split` with one worker (in this process, which keeps
  FFmpeg's threads), with a worker per core (the clips listed over again to give each
  worker `--videos-per-worker` videos), and (`--beam`) the Apache Beam DirectRunner
  with as many worker processes on the same list; wall time, start-ups included (the
  pipeline's takes seconds: give it enough videos to compare rates). With local
  workers, the CPU seconds per video of the process that runs them (it starts them,
  hears their progress, and renames or joins the shards they write) bound the local
  path's rate however many cores there are (`local_parent_limit_videos_per_s`; here
  with a shard per video, so a commit per video).

Decoding, stages and the worker's job are timed in CPU seconds of this process
(`time.process_time`), best of three, so rates per core do not depend on other
processes; their ratio, worker over decoding, is the cost of preparation over
decoding. Reports hours per 100k clips on a 32-core machine (per-core rate x 32, i.e.
assuming preparation scales with cores as the work per video is independent).
Writes `OUT/benchmark_prepare.json` and `OUT/benchmark_prepare.png`. A measurement, not a test.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Only light imports at the top: worker processes (spawned) re-import this module, and
# TensorFlow would add seconds to each one's start: it is imported where it is used.
import av  # noqa: E402
from av.video.reformatter import VideoReformatter  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402
from PIL import Image  # noqa: E402

from tadax.data import record_bytes  # noqa: E402
from tadax.data.annotations import Entry  # noqa: E402
from tadax.data.encode import EncodeOptions, bt601_planes, planes_jpeg  # noqa: E402
from tadax.data.tfrecord_file import TFRecordFileWriter  # noqa: E402

SIZES = {"340x256": (340, 256), "1280x720": (1280, 720)}
SECONDS, FPS = 10, 30


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
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _best_cpu_seconds(run, repeats: int = 3):
    """(least CPU seconds of this process over `repeats` calls of `run`, its last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.process_time()
        result = run()
        best = min(best, time.process_time() - start)
    return best, result


def _decoded_frames(path: str) -> list:
    """Every frame of `path`, decoded by PyAV with one FFmpeg thread, as a worker decodes."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        return list(container.decode(stream))


def decode_only(path: str) -> float:
    """CPU seconds to decode every frame of `path` with one thread (no conversion)."""
    def run():
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            for _ in container.decode(stream):
                pass
    return _best_cpu_seconds(run)[0]


def stages(path: str, opts: EncodeOptions, out: str) -> dict:
    """CPU seconds of each preparation stage for one video in one thread, as a worker runs
    them (there each frame goes through all stages as it is decoded)."""
    decode, frames = _best_cpu_seconds(lambda: _decoded_frames(path))
    reformatter = VideoReformatter()
    convert, planes = _best_cpu_seconds(
        lambda: [bt601_planes(reformatter, f, opts.short_side) for f in frames])
    jpeg, jpegs = _best_cpu_seconds(lambda: [planes_jpeg(y, opts.jpeg_quality) for y in planes])

    def write():
        with TFRecordFileWriter(out) as writer:
            writer.write(record_bytes.sequence_example(
                jpegs, label=0, text="x", filename="v.mp4", start_us=0,
                end_us=SECONDS * 10 ** 6, fps=float(FPS)))
    return {"decode": decode, "convert_resize": convert, "jpeg": jpeg,
            "write": _best_cpu_seconds(write)[0]}


def worker_seconds(paths, opts: EncodeOptions, out: str) -> float:
    """CPU seconds per video of a worker's job, `encode_and_write_shard`, over `paths` as one
    shard (one FFmpeg thread, as in every worker)."""
    from tadax.data.prepare import ShardJob, encode_and_write_shard

    entries = tuple(Entry(path=p, label=0, text="x") for p in paths)
    job = ShardJob(0, out, out + ".json", entries)
    seconds, meta = _best_cpu_seconds(lambda: encode_and_write_shard(job, opts))
    if meta["written"] != len(paths):
        raise RuntimeError(f"{out}: skipped {meta['skipped']}")
    return seconds / len(paths)


def end_to_end(paths, out: str, opts: EncodeOptions, workers: int, beam_args=None) -> tuple:
    """(videos per second of wall time, CPU seconds of this process per video) of one
    `prepare_split` over `paths` (one shard per video) into a fresh folder, start-up of
    worker processes or of the pipeline included. With local workers, this process's CPU
    time is what the process running them spends per video."""
    from tadax.data.prepare import prepare_split

    entries = [Entry(path=p, label=0, text="x") for p in paths]
    for f in list(epath.Path(out).glob("bench*")) + list(epath.Path(out).glob("_meta/bench*")):
        f.unlink()
    start, cpu = time.perf_counter(), time.process_time()
    summary = prepare_split(entries, [], out_dir=out, name="bench", num_shards=len(paths),
                            opts=opts, workers=workers, quiet=True, beam_args=beam_args)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if summary["num_examples"] != len(paths):
        raise RuntimeError(f"{out}: {summary['num_skipped']} clips skipped; see bench-report.txt")
    return len(paths) / seconds, cpu / len(paths)


def plot(result: dict, path: str) -> None:
    """Stacked bars: seconds per video in each stage, per clip size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["sizes"])
    parts = ("decode", "convert_resize", "jpeg", "write")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bottom = np.zeros(len(names))
    for part in parts:
        values = np.array([result["sizes"][n]["cpu_seconds_per_video"][part] for n in names])
        ax.bar(names, values, bottom=bottom, label=part)
        bottom += values
    ax.set_ylabel("CPU seconds per 10 s clip, one thread")
    ax.set_title(f"preparation stages (short side {result['short_side']}, "
                 f"JPEG q{result['jpeg_quality']})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/tadax_prepare_bench", help="clips, shards and results")
    p.add_argument("--clips", type=int, default=2, help="clips per size")
    p.add_argument("--short-side", type=int, default=320, help="as data/prepare.py kinetics")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--beam", action="store_true", help="also time the Beam DirectRunner")
    p.add_argument("--videos-per-worker", type=int, default=24,
                   help="videos per worker process in the multi-process runs (the clips "
                        "listed over again)")
    args = p.parse_args(argv)
    if args.clips < 1:
        raise SystemExit(f"--clips must be >= 1, got {args.clips}")
    if args.videos_per_worker < 1:
        raise SystemExit(f"--videos-per-worker must be >= 1, got {args.videos_per_worker}")
    cores = len(os.sched_getaffinity(0))
    opts = EncodeOptions(short_side=args.short_side, jpeg_quality=args.jpeg_quality)
    out = epath.Path(args.out)
    result = {"date": time.strftime("%Y-%m-%d"), "cores": cores, "clips_per_size": args.clips,
              "short_side": args.short_side, "jpeg_quality": args.jpeg_quality, "sizes": {}}
    for name, (width, height) in SIZES.items():
        folder = out / name
        (folder / "clips").mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(args.clips):
            path = folder / "clips" / f"clip{i}.mp4"
            if not path.exists():
                print(f"generating {path}", file=sys.stderr)
                write_clip(str(path), width, height, seed=i)
            paths.append(str(path))
        decode = float(np.mean([decode_only(p) for p in paths]))
        parts = [stages(p, opts, str(folder / "stage.tfrecord")) for p in paths]
        worker = worker_seconds(paths, opts, str(folder / "worker.tfrecord"))
        r = {"cpu_seconds_per_video": {k: float(np.mean([s[k] for s in parts]))
                                       for k in parts[0]},
             "decode_only_videos_per_s_per_core": 1.0 / decode,
             "prepare_videos_per_s_per_core": 1.0 / worker,
             "prepare_over_decode_per_core": worker / decode,
             "prepare_videos_per_s_one_process": end_to_end(paths, str(folder / "one"), opts,
                                                            1)[0]}
        r["hours_per_100k_on_32_cores"] = 1e5 / (r["prepare_videos_per_s_per_core"] * 32) / 3600
        repeated = paths * -(-args.videos_per_worker * cores // len(paths))
        rate, parent = end_to_end(repeated, str(folder / "all"), opts, cores)
        r["prepare_videos_per_s_all_cores"] = rate
        r["local_parent_cpu_seconds_per_video"] = parent
        r["local_parent_limit_videos_per_s"] = 1.0 / parent
        if args.beam:
            r["beam_direct_videos_per_s_all_cores"] = end_to_end(
                repeated, str(folder / "beam"), opts, 1,
                beam_args=["--runner", "DirectRunner", "--direct_num_workers", str(cores),
                           "--direct_running_mode", "multi_processing"])[0]
        result["sizes"][name] = r
    (out / "benchmark_prepare.json").write_text(json.dumps(result, indent=1))
    plot(result, str(out / "benchmark_prepare.png"))
    print(json.dumps(result, indent=1))
    print(f"-> {out}/benchmark_prepare.json, {out}/benchmark_prepare.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
