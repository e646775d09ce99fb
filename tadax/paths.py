"""User paths, local or remote (gs://...), through one layer: `etils.epath`.

epath dispatches `gs://` to TensorFlow's filesystem when TensorFlow is installed
(`EPATH_USE_TF=false`: gcsfs), and plain paths to the local filesystem.
"""

import os

from etils import epath


def is_remote(path: "str | os.PathLike") -> bool:
    """True for a URL such as `gs://bucket/dir`."""
    return "://" in os.fspath(path)


def user_path(path: "str | os.PathLike") -> epath.Path:
    """`path` as an `epath.Path`: a URL as given; a local path with `~` expanded, made absolute."""
    if is_remote(path):
        return epath.Path(path)
    return epath.Path(path).expanduser().absolute()
