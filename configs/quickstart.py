"""Quick start: a tiny TAdaFormer on the built-in synthetic temporal dataset.

Reproduces: the method's point on data where only time order tells classes
apart. The synthetic classes come in pairs that differ only in the order of
their frames, so a model that cannot use time is at chance within a pair.

  python train.py
  python train.py --config configs/quickstart.py:shuffle --workdir workdirs/quickstart_shuffled

Result: 95% val top-1 or more (typically 99%+), and validation clips played backwards
are classified as their pair's other class (90% or more); tests/test_quick_start.py
checks both on every test run. The `shuffle` variant, which destroys the time order
(frames shuffled per clip at train and test time), ends near 50% (top-5 100%): the pair
is found, the direction is chance. Cost: 20 epochs of 32 steps of 32 clips, validated
every 2 epochs: about 2 minutes on a 2-core CPU, data generated on first use (~20 s);
no downloads.
"""

from configs import common, rules


def get_config(arg: str = ""):
    shuffle = arg == "shuffle"
    c = common.base_config(
        name="quickstart" + ("_shuffled" if shuffle else ""), arch="tadaformer_tiny",
        dataset="synthetic", num_classes=8, frames=8, image_size=32, epochs=20.0,
        warmup_epochs=2.0, base_lr=1e-3, weight_decay=0.05, schedule="cosine_v2",
        warmup_start_lr=1e-6, end_lr=1e-6, label_smoothing=0.1, drop_path=0.0,
        data_overrides=dict(shuffle_frames=shuffle))
    rules.tadaformer_rules(c.optimizer, depth=c.model.depth, layer_decay=1.0)
    c.model.dropout_rate = 0.0
    c.train.global_batch_size = 32
    c.train.log_every_steps = 10
    c.checkpoint.every_steps = 200
    c.checkpoint.every_secs = 300.0
    c.eval.batch_size = 32
    c.eval.every_steps = 64       # every 2 epochs
    return c
