"""User paths, local or remote (gs://...), through one layer: `etils.epath`.

epath dispatches `gs://` to TensorFlow's filesystem when TensorFlow is installed
(`EPATH_USE_TF=false`: gcsfs), and plain paths to the local filesystem.
"""

import contextlib
import os
import tempfile
from typing import Iterator

from etils import epath


def is_remote(path: "str | os.PathLike") -> bool:
    """True for a URL such as `gs://bucket/dir`."""
    return "://" in os.fspath(path)


def user_path(path: "str | os.PathLike") -> epath.Path:
    """`path` as an `epath.Path`: a URL as given; a local path with `~` expanded, made absolute."""
    if is_remote(path):
        return epath.Path(path)
    return epath.Path(path).expanduser().absolute()


@contextlib.contextmanager
def local_copy(path: "str | os.PathLike") -> Iterator[str]:
    """A local file name for `path`: itself, or a temporary copy of a remote file (for
    readers that need a local file: the video decoder, safetensors' memory map)."""
    if not is_remote(path):
        yield os.fspath(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, epath.Path(path).name)
        epath.Path(local).write_bytes(epath.Path(path).read_bytes())
        yield local
