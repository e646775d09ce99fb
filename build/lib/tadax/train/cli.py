"""Command-line pieces shared by train.py and eval.py: multi-host start-up flags."""

import jax
from absl import flags

flags.DEFINE_bool("distributed", False, "Multi-host: call jax.distributed.initialize().")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (with --distributed).")


def initialize_distributed() -> None:
    """With --distributed, `jax.distributed.initialize` from the flags given (the platform's
    own settings for those left out, e.g. on Cloud TPU or SLURM)."""
    if flags.FLAGS.distributed:
        jax.distributed.initialize(coordinator_address=flags.FLAGS.coordinator_address,
                                   num_processes=flags.FLAGS.num_processes,
                                   process_id=flags.FLAGS.process_id)
