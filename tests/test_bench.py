"""python -m tadax.bench: table format, overrides, memory extrapolation, MFU arithmetic,
error lines, and each mode run on the tiny quick-start model."""

import numpy as np
import pytest

from tadax.bench import __main__ as bench
from tadax.bench import accelerator, against, host_cpu, memory, op
from tadax.bench.recipes import BenchError, parse_overrides, recipe_config
from tadax.bench.table import markdown_table, min_median

GIB = 2 ** 30


def _table_rows(out: str):
    """The data rows of the markdown table in `out` as lists of cells."""
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert lines[1].startswith("|---|"), out
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_markdown_table_and_min_median():
    assert markdown_table(("a", "b"), [(1, "x"), (2.5, "y")]) == (
        "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | y |")
    with pytest.raises(ValueError, match="2 headers"):
        markdown_table(("a", "b"), [(1,)])
    assert min_median([3.0, 1.0, 2.0, 10.0]) == "1 / 2.5 s"
    assert min_median([0.0123, 0.0125]) == "0.0123 / 0.0124 s"


def test_overrides_reach_the_recipe_config():
    pairs = parse_overrides(["model.dtype=bfloat16", "model.num_frames=32", "model.remat=full",
                             "train.label_smoothing=0.0"])
    assert pairs[1] == ("model.num_frames", 32) and pairs[2] == ("model.remat", "full")
    config = recipe_config("tadaformer_b16", pairs)
    assert (config.model.dtype, config.model.num_frames, config.model.remat,
            config.train.label_smoothing) == ("bfloat16", 32, "full", 0.0)
    assert recipe_config("tadaformer_b16").model.dtype == "float32"   # a fresh config each time
    with pytest.raises(BenchError, match="no field 'model.no_such_field'"):
        recipe_config("tadaformer_b16", parse_overrides(["model.no_such_field=1"]))
    with pytest.raises(BenchError, match="model.depth='deep'"):
        recipe_config("tadaformer_b16", parse_overrides(["model.depth=deep"]))
    with pytest.raises(BenchError, match="expects KEY=VALUE"):
        parse_overrides(["model.dtype"])


def test_memory_extrapolation():
    fixed, per_clip = memory.linear_fit((1, 2), (3 * GIB, 5 * GIB))
    assert (fixed, per_clip) == (1 * GIB, 2 * GIB)
    assert memory.largest_batch(fixed, per_clip, 16 * GIB) == 7       # 1 + 2 * 7.5
    assert memory.largest_batch(20 * GIB, per_clip, 16 * GIB) == 0
    row = memory.fit_row((2, 4), (int(10.5 * GIB), int(12.5 * GIB)))
    assert row["fixed_gib"] == pytest.approx(8.5) and row["per_clip_gib"] == pytest.approx(1.0)
    assert row["fits"] == [7, 23, 71, 132]
    with pytest.raises(ValueError):
        memory.largest_batch(0, 0, GIB)


@pytest.mark.parametrize("kind, name, peak", [
    ("TPU v4", "TPU v4", 275e12), ("TPU v5 lite", "TPU v5e", 197e12),
    ("TPU v5", "TPU v5p", 459e12), ("TPU v5p", "TPU v5p", 459e12),
    ("TPU v6 lite", "TPU v6e", 918e12), ("NVIDIA A100-SXM4-80GB", "NVIDIA A100", 312e12),
    ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM", 989e12),
    ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", "NVIDIA H200", 989e12),
    ("NVIDIA B200", "NVIDIA B200", 2250e12)])
def test_peak_rates_by_device_kind(kind, name, peak):
    assert accelerator.peak_bf16(kind) == (name, peak)


def test_mfu_arithmetic():
    # 989 TFLOP per step in 2 s on an H200 (989 TFLOP/s peak): half the peak.
    assert accelerator.mfu(989e12, 2.0, "NVIDIA H200") == pytest.approx(0.5)
    assert accelerator.mfu(1e9, 1.0, "cpu") is None


@pytest.mark.parametrize("argv, message", [
    (["--set", "model.nope=1", "--models", "tadaformer_tiny"], "no field 'model.nope'"),
    (["--against-original", "/nonexistent/TAdaConv", "--models", "tadaformer_tiny"],
     "not a checkout of the original"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    assert bench.main(argv) == 1
    _assert_one_error_line(capsys.readouterr().err, message)


def _assert_one_error_line(err: str, message: str):
    """The error is the last line of stderr, the only one saying error, without a traceback."""
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, err
    assert err.count("error") == 1 and "Traceback" not in err, err


def test_matmul_rates_of_both_libraries_go_into_one_line():
    """--against-original's header line: XLA's and torch's float32 rates at B/16's dense and
    batched shapes, each figure beside its own library."""
    pytest.importorskip("torch", reason="needs the test extra's torch")
    rates = against.matmul_rates(runs=2)
    assert sorted(rates) == ["torch batched", "torch dense", "xla batched", "xla dense"]
    assert all(np.isfinite(v) and v > 0 for v in rates.values()), rates
    line = against.matmul_rates_line({"xla dense": 201.4, "torch dense": 150.6,
                                      "xla batched": 61.2, "torch batched": 98.7})
    assert line.startswith("float32 matmul here, GFLOP/s: dense 1576x768 @ 768x3072 XLA 201, "
                           "torch 151; batched 96 x 197x64 @ 64x197 XLA 61, torch 99"), line


X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC 9B45
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_bf16 avx512_vnni

processor\t: 1
model name\t: AMD EPYC 9B45
flags\t\t: fpu sse4_2 avx avx2
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics
"""


def test_host_cpu_line_names_the_widest_vector_isa():
    """The header's CPU line: the first processor's model (with its family and model
    numbers) and flags; AVX-512 over AVX2 over AVX, with the bf16 / VNNI extensions it
    has; Arm's NEON from its Features line."""
    x86 = host_cpu.parse_cpuinfo(X86_CPUINFO)
    assert x86["model"] == "AMD EPYC 9B45 (family 26, model 2)" and "avx512f" in x86["flags"]
    assert host_cpu.describe(x86["model"], x86["flags"], 2) == (
        "host CPU: AMD EPYC 9B45 (family 26, model 2), 2 core(s) for this process; "
        "vector ISA: AVX-512 (avx512_bf16, avx512_vnni)")
    assert host_cpu.describe("Xeon", ["sse4_2", "avx", "avx2"], 8).endswith("vector ISA: AVX2")
    arm = host_cpu.parse_cpuinfo(ARM_CPUINFO)
    assert host_cpu.describe(arm["model"], arm["flags"], 4) == (
        "host CPU: unknown model, 4 core(s) for this process; vector ISA: NEON")
    assert host_cpu.host_cpu_line().startswith("host CPU: ")


def test_missing_package_of_the_original_is_named(tmp_path, capsys):
    for marker in ("tadaconv/models/base/builder.py", "configs/pool/base.yaml"):
        (tmp_path / marker).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / marker).write_text("")
    (tmp_path / "tadaconv/__init__.py").write_text("")
    (tmp_path / "tadaconv/models/__init__.py").write_text("import tadax_absent_package\n")
    assert bench.main(["--against-original", str(tmp_path), "--models", "tadaformer_b16"]) == 1
    _assert_one_error_line(capsys.readouterr().err,
                           "needs the Python package 'tadax_absent_package'")


def test_unknown_model_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--models", "resnet50"])
    assert e.value.code == 2 and "unknown resnet50" in capsys.readouterr().err


def test_op_alone_on_a_small_shape():
    rows = op.op_rows((1, 2, 6, 6, 8), groups=8, runs=1)
    assert [r[:2] for r in rows] == [("fast", "shifted"), ("fast", "lax"), ("vmap", "shifted"),
                                     ("vmap", "lax")]
    assert all(float(r[3]) > 0 for r in rows)


TINY = ["--models", "tadaformer_tiny", "--rounds", "1", "--runs", "1", "--set", "model.depth=1"]


def test_eval_mode_runs_the_eval_step(capsys):
    assert bench.main(["--mode", "eval", "--rounds", "2", *TINY[:2], "--runs", "1",
                       "--set", "model.depth=1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1] == host_cpu.host_cpu_line()
    rows = _table_rows(out)
    assert [r[:2] for r in rows] == [["tadaformer_tiny", "1"], ["tadaformer_tiny", "2"]]
    assert float(rows[0][3]) > 0 and float(rows[0][4]) > 0     # clips/s, XLA GFLOP


def test_accelerator_mode_on_cpu_says_mfu_unknown(capsys):
    assert bench.main(["--mode", "accelerator", *TINY]) == 0
    out = capsys.readouterr().out
    assert "no known peak bf16 rate for device kind 'cpu': MFU unknown" in out
    (row,) = _table_rows(out)
    assert row[:2] == ["tadaformer_tiny", "bfloat16"] and row[-1] == "unknown"
    assert float(row[5]) > 0 and float(row[6]) > 0            # clips/s, TFLOP per step


def test_memory_mode_extrapolates_from_two_compiles(capsys):
    assert bench.main(["--mode", "memory", "--models", "tadaformer_tiny", "--frames", "8",
                       "--dtypes", "float32", "--remat", "none",
                       "--set", "model.depth=1"]) == 0
    out = capsys.readouterr().out
    assert "at batch 1 and 2 per device" in out
    (row,) = _table_rows(out)
    assert row[:4] == ["tadaformer_tiny", "8", "float32", "none"]
    peak, fixed, per_clip = (float(c) for c in row[4:7])
    fits = [int(c) for c in row[7:11]]
    assert per_clip > 0 and peak == pytest.approx(fixed + per_clip, rel=1e-3)
    assert fits == sorted(fits) and fits[0] > 0 and row[11] == "XLA estimate"
    assert np.isclose(fits[-1], (141 - fixed) / per_clip, rtol=0.02)


def test_group_key_folds_indices_and_names_the_pass():
    from tadax.bench.profile import group_key
    assert (group_key("jit(step)/transpose(jvp(VideoClassifier))/backbone/layers_11/mlp/c_fc/"
                      "dot_general") == "BWD dot_general [mlp/c_fc]")
    assert group_key("jit(step)/jvp(VideoClassifier)/backbone/stages_2_7/dwconv/mul") == \
        "FWD mul [stages_N_N/dwconv]"
    assert group_key("jit(step)/add") == "FWD add [step]"


def test_profile_mode_accounts_for_the_step(capsys, tmp_path):
    assert bench.main(["--mode", "profile", "--models", "tadaformer_tiny", "--runs", "1",
                       "--top", "1000", "--trace-dir", str(tmp_path),
                       "--set", "model.depth=1"]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert rows[0][:2] == ["tadaformer_tiny", "all ops"]
    total = float(rows[0][2])
    groups = {r[1]: float(r[2]) for r in rows[1:]}
    assert sum(groups.values()) == pytest.approx(total, rel=0.01)
    assert list(groups.values()) == sorted(groups.values(), reverse=True)
    # the MLP's matmuls run forward once and backward (input and kernel gradients)
    assert "FWD dot_general [mlp/c_fc]" in groups and "BWD dot_general [mlp/c_fc]" in groups
    assert list(tmp_path.glob("plugins/profile/*/*.trace.json.gz"))


def _tiny_videos(folder, count=2, frames=12):
    """`count` small H.264 clips of the synthetic set's classes -> their paths."""
    from tadax.prepare.synthetic import CLASSES, class_clip, write_mp4
    paths = []
    for i in range(count):
        path = str(folder / f"v{i}.mp4")
        write_mp4(path, class_clip(np.random.default_rng(i), CLASSES[i], frames, 48), fps=12)
        paths.append(path)
    return paths


def test_input_mode_times_each_pipeline_of_the_recipe(tmp_path, capsys):
    """--mode input on the quick-start recipe: records prepared from the given videos, one row
    per pipeline; the multi-view row's videos/s is its views/s over the recipe's views (2 clips
    x 1 crop), and the JPEG share is the pipeline's rate over decoding-only's."""
    sources = _tiny_videos(tmp_path)
    assert bench.main(["--mode", "input", "--models", "tadaformer_tiny", "--sources", *sources,
                       "--clips", "4", "--batch", "2", "--rounds", "1", "--runs", "2",
                       "--workdir", str(tmp_path / "work")]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert [r[1] for r in rows] == ["train", "eval, centre view", "eval, 2 clips x 1 crops"]
    for _, _, _, clips, videos, share in rows[:2]:
        assert float(clips) == float(videos) > 0 and 0 < float(share.rstrip("%"))
    assert float(rows[2][4]) == pytest.approx(float(rows[2][3]) / 2, rel=0.01)
    assert rows[2][5] == "-"
    (out,) = (tmp_path / "work").iterdir()
    assert sorted(p.name for p in out.glob("train-0*")) == [f"train-0000{k}-of-00004"
                                                            for k in range(4)]


def test_prepare_mode_rates_follow_from_the_measured_seconds(tmp_path):
    """A worker's CPU seconds per video give the per-core rate, its ratio to decoding and the
    hours for 100k clips on 32 cores; `measure` really prepares the clips it times."""
    from tadax.bench import preparation
    from tadax.prepare.encode import EncodeOptions

    r = {"decode_only": 0.05, "decode": 0.06, "worker": 0.2, "one_process": 3.0,
         "all_cores": 5.0, "parent_cpu": 0.004, "convert_resize": 0.05, "jpeg": 0.08,
         "write": 0.01}
    row = preparation.rate_row("340x256", r)
    assert row == ("340x256", "20 videos/s", "5 videos/s", "4x", "0.17", "3 videos/s",
                   "5 videos/s", "-", "250 videos/s")      # 1e5 / (5 * 32) / 3600 h = 0.17
    paths = _tiny_videos(tmp_path, count=1)
    m = preparation.measure(paths, str(tmp_path), EncodeOptions(), cores=1, repeats=1,
                            videos_per_worker=1, beam=False)
    assert all(m[k] > 0 for k in (*preparation.STAGES, "decode_only", "worker", "one_process",
                                  "all_cores"))
    assert [p.name for p in (tmp_path / "one").glob("bench-0*")] == ["bench-00000-of-00001"]
