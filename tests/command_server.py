"""Runs the project's Python commands for tests without paying their imports each time.

A command (`python train.py ...`, `python -m tadax.finetune ...`) spends ~4 CPU-s importing
TensorFlow, jax, flax and Orbax before it does anything, and the suite starts dozens. Each
pytest process starts one server (`python tests/command_server.py SOCKET`) on first use.
It imports those libraries as a command's start-up does
(`tadax.startup.import_tensorflow_quietly`), never starts a jax backend, and forks a
process per command. That process takes the command's stdin (/dev/null), stdout, stderr,
working directory, environment and argv, re-reads jax's settings from the environment, and
runs the script (or `-m` module) as `__main__`; it ends as the interpreter would (non-daemon
threads joined, atexit handlers run, streams flushed, an uncaught KeyboardInterrupt killing
it with SIGINT). It is a real process: tests signal and kill it by its pid and read its
exit status.

What it cannot reproduce it execs for real: a command whose environment changes what an
interpreter, its allocator or TensorFlow read while starting (PYTHON* other than
PYTHONPATH and PYTHONUNBUFFERED, LD_*, GLIBC_TUNABLES, MALLOC_*, TF_*, OMP_*, OPENBLAS_*,
MKL_*, or a JAX_* variable removed). Start-up itself is not under test here: the tests of
it start commands with `subprocess` (test_readme.py's `absl_flags`: every entry point in a
fresh interpreter prints nothing on stderr; tests/test_startup.py, tests/test_quick_start.py,
test_run_directory.py::test_ctrl_c_while_starting_is_one_line). `TADAX_TEST_EXEC=1` runs
every command with `subprocess` instead: the same tests pass either way.

Client API, the subset of `subprocess` the tests use: `popen(args, cwd=, env=, stdout=,
stderr=, text=)` (pid, poll, wait, communicate, send_signal, kill, returncode,
stdout/stderr pipes) and `run(args, cwd=, env=, capture_output=, text=, timeout=)`.
"""

import atexit
import gc
import io
import json
import locale
import os
import runpy
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Environment variables an interpreter, its allocator or TensorFlow read while starting:
# a command whose value differs from the server's is exec'd for real.
_START_UP_PREFIXES = ("PYTHON", "LD_", "GLIBC_TUNABLES", "MALLOC_", "TF_", "OMP_",
                      "OPENBLAS_", "MKL_")
_EMULATED = ("PYTHONPATH", "PYTHONUNBUFFERED")


# ----------------------------------------------------------------------------- server

def _huge_pages(env: dict) -> dict:
    """`env` as a command's huge-page re-exec would leave it (tadax.host_memory)."""
    from tadax import host_memory
    return host_memory.environment_with_huge_pages(
        env, host_memory.glibc_version(), host_memory.thp_mode()) or dict(env)


def _differs_at_start_up(env: dict, base: dict) -> bool:
    for key in set(env) | set(base):
        if env.get(key) == base.get(key) or key in _EMULATED:
            continue
        if key.startswith(_START_UP_PREFIXES) or (key.startswith("JAX_") and key not in env):
            return True
    return False


def _apply_jax_settings(env: dict, base: dict) -> bool:
    """jax reads JAX_* variables once, when it is imported: sets those that differ from the
    server's. False (the command is then exec'd) where one cannot be parsed the way jax
    parses it, or where this jax keeps its settings elsewhere."""
    import jax
    holders = getattr(jax.config, "_value_holders", None)   # private: may move in a jax upgrade
    if holders is None:
        return False
    for key, text in env.items():
        if not key.startswith("JAX_") or base.get(key) == text or key.lower() not in holders:
            continue
        current = holders[key.lower()].value
        try:
            if isinstance(current, bool):
                value = text.lower() in ("1", "y", "yes", "t", "true", "on")
            elif isinstance(current, int):
                value = int(text)
            elif isinstance(current, float):
                value = float(text)
            else:
                value = text
            jax.config.update(key.lower(), value)
        except Exception:  # pylint: disable=broad-except
            return False
    return True


def _std_streams(env: dict) -> None:
    """sys.stdin/stdout/stderr made for file descriptors 0-2 as a starting interpreter
    makes them (buffering from the descriptors and PYTHONUNBUFFERED)."""
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    encoding = sys.stdout.encoding
    streams = []
    for fd in (1, 2):
        tty = os.isatty(fd)
        raw = io.FileIO(fd, "w", closefd=False)
        binary = raw if unbuffered else io.BufferedWriter(raw)
        streams.append(io.TextIOWrapper(binary, encoding=encoding, errors=(
            "backslashreplace" if fd == 2 else sys.stdout.errors), line_buffering=tty or fd == 2,
            write_through=unbuffered))
    sys.stdout, sys.stderr = streams
    sys.__stdout__, sys.__stderr__ = streams
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                                 encoding=encoding)


def _exit_code(error: SystemExit) -> int:
    if error.code is None:
        return 0
    if isinstance(error.code, int):
        return error.code & 0xFF
    print(error.code, file=sys.stderr)
    return 1


def _run_command(request: dict, base_env: dict, base_path: list) -> None:
    """In the forked process: becomes the command; never returns."""
    argv, env = request["argv"], _huge_pages(request["env"])
    os.chdir(request["cwd"])
    if _differs_at_start_up(env, base_env) or not _apply_jax_settings(env, base_env):
        os.execve(sys.executable, [sys.executable, *argv], env)
    os.environ.clear()
    os.environ.update(env)
    _std_streams(env)
    module = argv[1] if argv[0] == "-m" else None
    first = os.getcwd() if module else os.path.dirname(os.path.abspath(argv[0]))
    sys.path[:] = [first, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep)), *base_path]
    sys.argv = list(argv[1:] if module else argv)
    sys.orig_argv = [sys.executable, *argv]
    code = 0
    try:
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as error:
        code = _exit_code(error)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:  # pylint: disable=broad-except
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()  # pylint: disable=protected-access
        atexit._run_exitfuncs()  # pylint: disable=protected-access
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # pylint: disable=broad-except
                pass
    if code == -signal.SIGINT:      # as an interpreter ends on an uncaught KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


def _receive(conn: socket.socket):
    """(request dict, [stdin, stdout, stderr] descriptors) sent by `Popen`."""
    head, fds, _, _ = socket.recv_fds(conn, 8, 3)
    (size,) = struct.unpack("!Q", head)
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError("client went away")
        data += chunk
    return json.loads(data), fds


def _serve_one(conn: socket.socket, base_env: dict, base_path: list) -> None:
    """In a forked waiter: forks the command, reports its pid, then its wait status."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    request, fds = _receive(conn)
    pid = os.fork()
    if pid == 0:
        try:
            conn.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            for fd in set(fds) - {0, 1, 2}:
                os.close(fd)
            _run_command(request, base_env, base_path)
        finally:                               # only where the command could not start
            traceback.print_exc()
            os._exit(1)
    for fd in fds:
        os.close(fd)
    conn.sendall(f"{pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    conn.sendall(f"{status}\n".encode())


def serve(path: str) -> None:
    """Imports what the commands import, then forks a waiter per connection on `path`."""
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)      # PR_SET_PDEATHSIG: end with the client
    base_env = dict(os.environ)
    own = set(filter(None, base_env.get("PYTHONPATH", "").split(os.pathsep)))
    base_path = [p for p in sys.path[1:] if p not in own]   # the interpreter's own entries
    sys.path.insert(1, str(REPO_ROOT))    # the project's tadax, as a command started there
    from tadax import startup
    startup.import_tensorflow_quietly()
    import flax  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
    import jax  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
    import optax  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
    import orbax.checkpoint  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
    # The imports' objects live as long as any command: out of the collector's view, full
    # collections in the commands scan only what the command made (as in conftest).
    gc.freeze()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # waiters are reaped by the kernel
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        conn, _ = server.accept()
        if os.fork() == 0:
            server.close()
            try:
                _serve_one(conn, base_env, base_path)
            finally:
                os._exit(0)
        conn.close()


# ----------------------------------------------------------------------------- client

_server = {}


def _socket_path() -> str:
    """This process's server (started on first use, with the environment the tests start
    commands from, after the huge-page re-exec a command would make)."""
    if "path" not in _server:
        folder = tempfile.mkdtemp(prefix="tadax-test-commands-")
        path = os.path.join(folder, "socket")
        from conftest import SESSION_ENVIRONMENT
        proc = subprocess.Popen([sys.executable, str(Path(__file__)), path], cwd=REPO_ROOT,
                                env=_huge_pages(SESSION_ENVIRONMENT), stdout=subprocess.PIPE,
                                text=True)
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the command server did not start (exit {proc.wait()})")
        _server.update(path=path, proc=proc)
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        atexit.register(proc.kill)
    return _server["path"]


def _serves(args) -> bool:
    """Whether `args` is `[sys.executable, SCRIPT | -m MODULE, ...]`, what the server runs."""
    args = [str(a) for a in args]
    return (len(args) >= 2 and args[0] == sys.executable
            and (args[1] == "-m" or not args[1].startswith("-")))


class Popen:
    """A command run by this process's command server; the `subprocess.Popen` subset the
    tests use. stdout/stderr: None (inherit), subprocess.PIPE, subprocess.STDOUT (stderr
    only) or a file object."""

    def __init__(self, args, cwd=None, env=None, stdout=None, stderr=None, text=False):
        if not _serves(args):
            raise ValueError(f"not a Python command the server runs: {list(args)[:3]}")
        self.args, self.returncode = [str(a) for a in args], None
        env = dict(os.environ if env is None else env)
        ours, theirs = [os.open(os.devnull, os.O_RDONLY)], [None, None]
        for i, spec in enumerate((stdout, stderr)):
            if spec == subprocess.PIPE:
                theirs[i], write = os.pipe()
                ours.append(write)
            elif spec == subprocess.STDOUT and i == 1:
                ours.append(ours[1])
            elif spec is None:
                ours.append(i + 1)
            else:
                ours.append(spec.fileno())
        payload = json.dumps({"argv": self.args[1:], "cwd": str(cwd or os.getcwd()),
                              "env": env}).encode()
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._conn.connect(_socket_path())
        socket.send_fds(self._conn, [struct.pack("!Q", len(payload))], ours)
        self._conn.sendall(payload)
        for fd in set(ours[:1] + [fd for fd, spec in zip(ours[1:], (stdout, stderr))
                                  if spec == subprocess.PIPE]):
            os.close(fd)
        self._reply = b""
        self.pid = int(self._line(None))
        self.stdout, self.stderr = (
            None if fd is None else (open(fd, encoding=locale.getpreferredencoding(False))
                                     if text else open(fd, "rb")) for fd in theirs)

    def _line(self, timeout):
        """The next line the waiter sends (None: none within `timeout` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._reply:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._conn.settimeout(left)
            try:
                chunk = self._conn.recv(64)
            except (socket.timeout, BlockingIOError):
                return None
            if not chunk:
                raise RuntimeError(f"the command server lost {self.args[:3]}")
            self._reply += chunk
        line, self._reply = self._reply.split(b"\n", 1)
        return line.decode()

    def poll(self):
        if self.returncode is None:
            line = self._line(0)
            if line is not None:
                self.returncode = os.waitstatus_to_exitcode(int(line))
                self._conn.close()
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            line = self._line(timeout)
            if line is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = os.waitstatus_to_exitcode(int(line))
            self._conn.close()
        return self.returncode

    def communicate(self, timeout=None):
        """(stdout, stderr) read to the end (None for those not piped), then the exit."""
        if not hasattr(self, "_readers"):
            self._outputs = [None, None]

            def read(i, stream):
                self._outputs[i] = stream.read()
                stream.close()

            self._readers = [threading.Thread(target=read, args=(i, s), daemon=True)
                             for i, s in enumerate((self.stdout, self.stderr)) if s is not None]
            for reader in self._readers:
                reader.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader in self._readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return tuple(self._outputs)

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)


def popen(args, **kwargs):
    """`Popen` through the server; `subprocess.Popen` for other commands (`python -c`) and
    under TADAX_TEST_EXEC=1."""
    if os.environ.get("TADAX_TEST_EXEC") == "1" or not _serves(args):
        return subprocess.Popen(args, **kwargs)
    return Popen(args, **kwargs)


def run(args, cwd=None, env=None, capture_output=False, text=False, timeout=None):
    """`subprocess.run` for a Python command, through the server."""
    pipe = subprocess.PIPE if capture_output else None
    proc = popen(args, cwd=cwd, env=env, stdout=pipe, stderr=pipe, text=text)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


if __name__ == "__main__":
    serve(sys.argv[1])
