"""Quick start: a tiny TAdaFormer on the built-in synthetic temporal dataset.

Reproduces: the method's point on data where only time order tells classes
apart. The synthetic classes come in pairs that differ only in the order of
their frames, so a model that cannot use time is at chance within a pair.

  python train.py                                   # ~2.5 min on a 2-core CPU
  python train.py --config configs/quickstart.py:shuffle --workdir workdirs/quickstart_shuffled

Measured (2 shared CPU cores): 98.0-99.6% val top-1 single view over runs,
98.4-99.2% with 2 clips; the `shuffle` variant, which destroys the time order (frames shuffled
per clip at train and test time), ends at 48-52% (top-5 100%): the pair is
found, the direction is chance. Cost: ~2.5-3 minutes each, data generated on
first use; no downloads.
"""

from configs import common, rules


def get_config(arg: str = ""):
    shuffle = arg == "shuffle"
    c = common.base_config(
        name="quickstart" + ("_shuffled" if shuffle else ""), arch="tadaformer_tiny",
        dataset="synthetic", num_classes=8, frames=8, image_size=32, epochs=30.0,
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
    return c
