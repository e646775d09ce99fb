"""The README's first command, `python train.py`, run as a user types it: the model learns.

The quick start trains a tiny TAdaFormer on the synthetic dataset whose classes come in
pairs that differ only in time order. The run is shared by the session (conftest's
background "quickstart", started as soon as a test here is collected). Bugs this catches:
any that stops learning (a wrong loss sign, labels shuffled against their clips, an
optimizer rule that freezes the model, a learning-rate schedule that ends at zero early),
and any that makes the model blind to time order (frames shuffled or averaged before the
temporal modules; then reversed clips keep their class).
"""

import json

import numpy as np
import pytest

from conftest import background_run
from test_run_directory import assert_quiet

pytestmark = pytest.mark.background("quickstart")


@pytest.fixture(scope="module")
def run():
    return background_run("quickstart") / "workdirs" / "quickstart"


def test_quick_start_reaches_95_percent_and_writes_its_run_directory(run):
    """Also: its output has only its own lines. Bug watched: TensorFlow's C++ INFO lines
    (tf.data's "TFRecordDataset `buffer_size` is unspecified" on every run)."""
    assert_quiet((run.parent.parent / "output.txt").read_text())
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["val/top1"] >= 95.0 and final["test/top1"] >= 95.0, final
    assert final["step"] == 640
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val_steps = [r["step"] for r in history if "val/top1" in r]
    assert val_steps == list(range(64, 641, 64))
    assert (run / "training_curves.png").stat().st_size > 10_000
    assert (run / "eval" / "confusion.png").stat().st_size > 10_000
    assert len((run / "eval" / "predictions.jsonl").read_text().splitlines()) == 256


def test_clips_played_backwards_are_the_paired_class(run):
    """The method's claim: the model tells a motion from the same motion reversed. Every
    validation clip, its frames in reverse order, must be classified as the other class
    of its pair (synthetic.PAIRS) in at least 90% of the clips."""
    import jax

    from tadax.data import pipeline
    from tadax.prepare import synthetic
    from tadax.models import build_model
    from tadax.train.checkpointing import load_weights
    from tadax.train.run_config import read_run_config

    variables, _ = load_weights(str(run))
    config = read_run_config(str(run))
    model = build_model(config.model)
    partner = dict(synthetic.PAIRS + tuple((r, f) for f, r in synthetic.PAIRS))
    apply = jax.jit(lambda v, x: model.apply(v, x))
    forward = backward = total = 0
    for batch in pipeline.build_eval_iterator(config.data, split=config.eval.val_split,
                                              global_batch_size=64, multi_view=False):
        keep, labels = batch["mask"], batch["label"][batch["mask"]]
        played = np.asarray(apply(variables, batch["video"])).argmax(-1)[keep]
        reversed_ = np.asarray(apply(variables, batch["video"][:, ::-1])).argmax(-1)[keep]
        forward += int(np.sum(played == labels))
        backward += int(np.sum(reversed_ == np.array([partner[int(c)] for c in labels])))
        total += int(keep.sum())
    assert total == 256
    assert forward / total >= 0.95 and backward / total >= 0.90, (forward, backward, total)
