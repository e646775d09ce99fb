"""The error a user fixes by changing a command or its configuration.

Commands (train.py, eval.py, `python -m tadax.convert`) report it as one line
without a traceback and exit non-zero.
"""


class ConfigError(ValueError):
    """A flag, config field or input path is wrong or missing; the message says what to do."""
