"""The errors a user acts on: a command or configuration to change, a run directory to
look after, a run to restart differently.

Commands (train.py, eval.py, `python -m tadax.convert`) report them as one line
without a traceback and exit non-zero.
"""


class ConfigError(ValueError):
    """A flag, config field or input path is wrong or missing; the message says what to do."""


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used as the command asks: another run holds it, its
    record or every checkpoint is damaged, its config differs, or it ran out of space.
    The message says what happened and what to do; nothing was lost."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run stopped before saving that state (the
    message names the last good checkpoint)."""
