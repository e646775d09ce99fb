"""`python -m tadax.convert zoo ... --report FILE` on the original's fixture checkpoints:
what was read off the weights against the settings the original built them from
(fixtures.json), what was assumed or given and whence, parameter counts against the
original's count, and the preprocessing against what eval.py then attaches."""

import json

import numpy as np
import pytest

from conftest import fixture_entries, fixtures_dir, require
from tadax import convert, torch_reader

torch = pytest.importorskip("torch")

# A model config field -> the original's setting of it (the fixtures' `model` block).
ORIGINAL_KEYS = {
    "num_classes": "VIDEO.HEAD.NUM_CLASSES", "width": "VIDEO.BACKBONE.NUM_FEATURES",
    "depth": "VIDEO.BACKBONE.DEPTH", "patch_size": "VIDEO.BACKBONE.PATCH_SIZE",
    "image_size": "VIDEO.BACKBONE.INPUT_RES", "tubelet_size": "VIDEO.BACKBONE.TUBLET_SIZE",
    "reduction": "VIDEO.BACKBONE.REDUCTION", "temp_enhance": "VIDEO.BACKBONE.TEMP_ENHANCE",
    "double_tada": "VIDEO.BACKBONE.DOUBLE_TADA", "rf_ratio": "VIDEO.BACKBONE.BRANCH.ROUTE_FUNC_R",
    "rf_kernels": "VIDEO.BACKBONE.BRANCH.ROUTE_FUNC_K", "depths": "VIDEO.BACKBONE.DEPTH",
    "dims": "VIDEO.BACKBONE.NUM_FILTERS", "stem_t_kernel": "VIDEO.BACKBONE.STEM.T_KERNEL_SIZE",
}


def _entry(name):
    require(fixtures_dir() / f"{name}.pyth", "the reference fixtures")
    return next(e for e in fixture_entries() if e["name"] == name)


def _attached_data(output):
    """What eval.py uses for the converted directory (its default config)."""
    from configs import checkpoint

    return checkpoint.get_config(str(output)).data


def _rows(rows):
    return {r["field"]: r for r in rows}


def test_json_report_of_a_tadaformer(tmp_path, capsys):
    """Bugs: a field read from the wrong axis or key (the values disagree with the settings
    the original built the model from), a setting given in the settings file still listed
    as assumed, batch statistics counted as parameters (the total is not the original's
    count), modules merged or dropped, the report's preprocessing not what eval.py uses."""
    entry = _entry("tadaformer_tiny_ssv2")
    settings = tmp_path / "mine.yaml"
    settings.write_text("VIDEO:\n  BACKBONE:\n    META_ARCH: VisionTransformer\n    NUM_HEADS: 8\n"
                        "    BRANCH:\n      HEAD_DIM: 64\n")
    out, report = tmp_path / "ckpt", tmp_path / "report.json"
    assert convert.main(["zoo", "--input", str(fixtures_dir() / "tadaformer_tiny_ssv2.pyth"),
                         "--output", str(out), "--upstream-config", str(settings),
                         "--report", str(report)]) == 0
    assert f"report -> {report}" in capsys.readouterr().out
    doc = json.loads(report.read_text())

    read = _rows(doc["read_off_the_weights"])
    assert read["arch"]["value"] == "tadaformer_b16"
    assert set(read) - {"arch"} == {"num_classes", "width", "depth", "patch_size", "image_size",
                                    "tubelet_size", "reduction", "temp_enhance", "double_tada",
                                    "rf_ratio", "rf_kernels"}
    for field, row in read.items():
        if field != "arch":
            assert row["value"] == entry["model"][ORIGINAL_KEYS[field]], field
    assert "backbone.conv1.weight (512, 3, 3, 16, 16)" in read["width"]["from"]
    assert "head.out.weight" in read["num_classes"]["from"]

    given = _rows(doc["given"])
    assert set(given) == {"num_heads", "rf_head_dim"}
    assert given["num_heads"] == {"field": "num_heads", "value": 8,
                                  "from": f"--upstream-config {settings}"}
    assumed = _rows(doc["assumed"])
    assert set(assumed) == {"tubelet_stride", "num_frames", "dropout_rate", "drop_path_rate"}
    assert assumed["num_frames"]["value"] == 16   # the fixture ran 8: an assumption, named
    assert assumed["num_frames"]["original_key"] == "DATA.NUM_INPUT_FRAMES"

    params = doc["parameters"]
    assert params["total"] == entry["num_params"]
    modules = {m["module"]: m for m in params["modules"]}
    classes, width = entry["model"]["VIDEO.HEAD.NUM_CLASSES"], 512
    assert modules["head/out"]["parameters"] == classes * width + classes
    assert modules["backbone/conv1"]["parameters"] == width * 3 * 3 * 16 * 16
    assert "backbone/layers_0" in modules and "backbone/layers_1" not in modules
    assert sum(m["parameters"] for m in modules.values()) == params["total"]
    assert params["total"] + params["batch_stats"] == params["source_values"]

    data = _attached_data(out)
    assert doc["preprocessing"]["dataset"] == data.dataset
    for key, value in doc["preprocessing"]["settings"].items():
        assert value == (list(data[key]) if isinstance(data[key], tuple) else data[key]), key


def test_markdown_report_of_a_convnext_with_a_kinetics_head(tmp_path):
    """A TAdaConvNeXtV2 (the fixture's weights with a 400-class head) converted with
    `--set` and `--num-frames`: those are named as given, the recipe's Kinetics-400
    preprocessing (interval sampling, 4 x 3 views) is attached and stated. Bugs: the
    Markdown report missing a part, --num-frames credited to --set, the dataset not told
    by the class count."""
    entry = _entry("tadaconvnextv2_tiny_k400")
    state = torch_reader.load_torch_file(str(fixtures_dir() / "tadaconvnextv2_tiny_k400.pyth"))
    sd = dict(state["model_state"])
    rng = np.random.default_rng(0)
    sd["head.out.weight"] = rng.normal(size=(400, 384)).astype(np.float32)
    sd["head.out.bias"] = np.zeros(400, np.float32)
    source = tmp_path / "k400.pyth"
    torch.save({"model_state": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}},
               source)
    out, report = tmp_path / "ckpt", tmp_path / "report.md"
    assert convert.main(["zoo", "--input", str(source), "--output", str(out), "--set",
                         "rf_head_dim=24", "--num-frames", "8", "--report", str(report)]) == 0
    text = report.read_text()
    for heading in ("# Conversion report", "## Read off the weights", "## Given on the command line",
                    "## Assumed (no weight shows them)", "## Parameters per module",
                    "## Preprocessing attached"):
        assert f"\n{heading}" in "\n" + text, heading
    assert "## Against the original" not in text
    assert "| depths | `[1, 1, 2, 1]` |" in text and "| dims | `[48, 96, 192, 384]` |" in text
    assert entry["model"]["VIDEO.BACKBONE.DEPTH"] == [1, 1, 2, 1]
    assert "| rf_head_dim | `24` | --set |" in text and "| num_frames | `8` | --num-frames |" in text
    assert "| stem_t_stride | `2` | the released TAdaConvNeXtV2s' value |" in text
    total = entry["num_params"] + (400 - 13) * (384 + 1)
    assert f"{total:,} parameters" in text
    assert f"| head/out | {400 * 384 + 400:,} | 0 |" in text
    data = _attached_data(out)
    assert (data.dataset, data.sampling, data.num_clips, data.num_crops) == ("kinetics400", "interval", 4, 3)
    assert "recipe for kinetics400 (the dataset told by the 400 classes" in text
    for key in ("sampling", "sampling_rate", "target_fps", "test_scale", "num_clips", "num_crops"):
        value = list(data[key]) if isinstance(data[key], tuple) else data[key]
        assert f"| {key} | `{value}` |" in text, key


def test_report_flags_refused_in_one_line_before_anything_is_written(tmp_path, capsys):
    src = str(require(fixtures_dir() / "tadaformer_tiny_k400.pyth", "the reference fixtures"))
    out = tmp_path / "out"
    cases = ((["clip", "--input", src, "--arch", "tadaformer_b16", "--report", "r.md"],
              "--report describes a zoo conversion"),
             (["zoo", "--input", src, "--against-original", str(tmp_path)],
              "give --report FILE too"),
             (["zoo", "--input", src, "--report", str(tmp_path / "r.md"), "--against-original",
               str(tmp_path)], "not a checkout of the original TAdaConv project"))
    for args, message in cases:
        assert convert.main(args + ["--output", str(out)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
        assert not out.exists() and not (tmp_path / "r.md").exists()
