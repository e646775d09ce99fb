"""`python -m tadax.convert zoo ... --report FILE --against-original PATH` on the fixture
checkpoints: the per-block error against the original PyTorch code.

Needs a checkout of the original project in $TADAX_ORIGINAL (and torch, einops), as
tests/test_bench_original.py does; under CI=true without it this file is not collected
(conftest.py).
"""

import json
import os

import numpy as np
import pytest

from conftest import fixtures_dir, require
from tadax import convert

pytest.importorskip("torch")
pytest.importorskip("einops")

# The README's tolerance of a faithful float32 implementation on O(1) outputs, applied to
# each output relative to its largest value.
TOLERANCE = 1e-4


def _original() -> str:
    path = os.environ.get("TADAX_ORIGINAL")
    if not path:
        pytest.skip("set TADAX_ORIGINAL to a checkout of the original TAdaConv project")
    return path


def _report(tmp_path, name, *extra):
    source = require(fixtures_dir() / f"{name}.pyth", "the reference fixtures")
    report = tmp_path / f"{name}.json"
    assert convert.main(["zoo", "--input", str(source), "--output", str(tmp_path / name),
                         "--report", str(report), "--against-original", _original(),
                         *extra]) == 0
    return json.loads(report.read_text())["against_original"]


@pytest.mark.parametrize("name, extra, blocks", [
    ("tadaformer_small_k400_d3", [], [f"backbone.layers.{i}" for i in range(3)]),
    ("tadaconvnextv2_tiny_k400", ["--set", "rf_head_dim=24", "--set", "image_size=64"],
     ["backbone.stages.0.0", "backbone.stages.1.0", "backbone.stages.2.0", "backbone.stages.2.1",
      "backbone.stages.3.0"]),
])
def test_every_block_agrees_with_the_original(tmp_path, name, extra, blocks):
    """Bugs: a block output compared in the wrong layout (tokens-first vs batch-first,
    channels-first), blocks missed or named out of order, an original built with other
    settings than the converted model (a strict load of the weights fails)."""
    against = _report(tmp_path, name, *extra)
    assert [r["output"] for r in against["rows"]] == blocks + ["features", "log_probs"]
    for row in against["rows"]:
        assert row["max_abs_error"] <= TOLERANCE * max(1.0, row["max_abs"]), row


def test_a_disagreeing_block_is_the_one_reported(tmp_path, monkeypatch):
    """The second block's MLP bias moved by 0.05 in the converted weights: the first block
    still agrees, the second and everything after it do not."""
    real = convert.convert_zoo

    def moved(*args):
        variables = real(*args)
        mlp = variables["params"]["backbone"]["layers_1"]["mlp"]["c_proj"]
        mlp["bias"] = np.asarray(mlp["bias"]) + 0.05
        return variables

    monkeypatch.setattr(convert, "convert_zoo", moved)
    rows = {r["output"]: r for r in _report(tmp_path, "tadaformer_small_k400_d3")["rows"]}
    assert rows["backbone.layers.0"]["max_abs_error"] <= TOLERANCE * rows["backbone.layers.0"]["max_abs"]
    for name in ("backbone.layers.1", "backbone.layers.2"):
        assert rows[name]["max_abs_error"] >= 0.04, rows[name]
