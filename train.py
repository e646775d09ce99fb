"""Train a TAdaConv V2 model: `python train.py --config configs/<recipe>.py [--config.a.b=v ...]`.

With no arguments it trains the quick-start model on the synthetic temporal
dataset. The same command runs on one CPU, several local devices or a
multi-host TPU/GPU slice (`--distributed`, which calls
`jax.distributed.initialize()`; pass the coordinator flags where the platform
does not provide them). Rerunning a command resumes its run from the newest
checkpoint that restores in the run directory (`--workdir`, default
`config.workdir`), which one run at a time may use (`--takeover_lock` takes over
the lock of a run that is gone). A SIGTERM (preemption) saves the current step and
exits with code 143, a Ctrl-C likewise with 130; a second Ctrl-C stops at once.
What a run directory survives and how to recover: docs/run_directory.md.
"""

import os
import sys

if __name__ == "__main__":   # before the heavy imports: re-runs itself once (see startup)
    from tadax import startup
    startup.prepare()

from absl import app, flags

from tadax.train import cli, preemption
from tadax.train.trainer import train_and_evaluate

_HERE = os.path.dirname(os.path.abspath(__file__))
cli.define_config(
    os.path.join(_HERE, "configs", "quickstart.py"),
    "Recipe config file (`path.py` or `path.py:arg`); fields overridable as --config.x.y=v.")
flags.DEFINE_string("workdir", None, "Run directory; default: the config's `workdir`.")
flags.DEFINE_bool("takeover_lock", False, "Take over the run directory's lock from a run that "
                  "is gone (a host lost, a lock on gs:// not yet expired); never from a live "
                  "process of this host.")
FLAGS = flags.FLAGS


@cli.one_line_errors
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.quiet_output()   # keep Orbax's per-save info lines out of the log
    cli.initialize_distributed()
    config = FLAGS.config
    try:
        train_and_evaluate(config, FLAGS.workdir or config.workdir, FLAGS.takeover_lock)
    except preemption.Preempted as e:
        print(e, flush=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
