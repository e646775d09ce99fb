"""Command-line pieces shared by train.py and eval.py: multi-host start-up flags, and
user errors reported as one line."""

import functools
import sys

import jax
from absl import flags

from tadax.checkpoint_io import CheckpointError
from tadax.data.video import VideoDecodeError
from tadax.errors import ConfigError, RunDirectoryError
from tadax.train.state import InitError
from tadax.weights.infer import ArchitectureError
from tadax.weights.mapping import WeightMismatchError

# Errors whose message tells the user what to change: no traceback for them.
USER_ERRORS = (ConfigError, CheckpointError, InitError, VideoDecodeError, ArchitectureError,
               WeightMismatchError, RunDirectoryError)

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


def one_line_errors(main):
    """Wraps an absl `main(argv)`: a user error prints `error: MESSAGE` and exits with 1."""
    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except USER_ERRORS as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
    return wrapped
