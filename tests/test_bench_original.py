"""python -m tadax.bench --against-original on a tiny original model (the fixtures' settings).

Needs a checkout of the original PyTorch project in $TADAX_ORIGINAL (and
torch, einops). Without it the tests skip, naming the variable; under CI=true
without it this file is not collected at all (see conftest.py), since CI has
no checkout of the original and allows no skips.
"""

import os

import pytest

from conftest import fixture_entries
from tadax import convert
from tadax.bench import against
from tadax.bench.recipes import BenchError

pytest.importorskip("torch")
pytest.importorskip("einops")

ENTRY = next((e for e in fixture_entries() if e["name"] == "tadaformer_tiny_k400"), None)


def _original() -> str:
    path = os.environ.get("TADAX_ORIGINAL")
    if not path:
        pytest.skip("set TADAX_ORIGINAL to a checkout of the original TAdaConv project")
    if ENTRY is None:
        pytest.skip("no fixtures.json (set TADAX_FIXTURES to the shared fixtures)")
    return path


def _compare(path, tolerance=1e-3):
    # The fixture's overrides set the test crop only; the comparison runs both sides at the
    # train crop (what the train step sees), so that is set to the fixture's crop too.
    overrides = dict(ENTRY["overrides"], **{"DATA.TRAIN_CROP_SIZE": ENTRY["crop"]})
    return against.compare(path, ENTRY["name"], ENTRY["upstream_config"], overrides,
                           [], batch=1, rounds=1, runs=1, tolerance=tolerance)


def test_tiny_original_agrees_and_is_timed_alternately(capsys):
    rows = _compare(_original())
    assert "eval outputs agree, max |log p| difference" in capsys.readouterr().out
    assert [r[1:3] for r in rows] == [("eval forward", 1), ("train step", 1)]
    for row in rows:
        assert len(row) == len(against.HEADERS)
        assert float(row[5].rstrip("x")) > 0


def test_disagreeing_weights_fail_loudly(monkeypatch):
    path = _original()
    real = convert.convert_zoo

    def shifted(*args):
        variables = real(*args)
        bias = variables["params"]["head"]["out"]["bias"].copy()
        bias[0] += 1.0    # one class only: a shift of every logit would not change p
        variables["params"]["head"]["out"]["bias"] = bias
        return variables

    monkeypatch.setattr(convert, "convert_zoo", shifted)
    with pytest.raises(BenchError, match="eval outputs disagree"):
        _compare(path)
