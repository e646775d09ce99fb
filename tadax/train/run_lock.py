"""One writer per run directory: the lock a training run holds while it writes there.

Two `train.py` processes on one run directory (a scheduler restarting a job whose old
machine still runs it, a second terminal) would write the same checkpoint steps and
break each other. A run takes `WORKDIR/run.lock` before it writes anything and keeps it
until it ends; a second run is refused with one line naming the holder (host, process
id, since when) and how to take over a lock whose run is gone (`--takeover_lock`).

- Local disk (and shared file systems with POSIX locks): an OS lock (`flock`) on the
  file, which the OS drops the moment the holder exits, however it exits (SIGKILL
  included): a lock on local disk is never stale on its own host. The file also names
  the holder; it is removed when the run ends.
- gs://: an object created only if it does not exist (`ifGenerationMatch=0`), which
  the run renews every `LEASE_SECONDS / 4` (rewritten only if it is still the version
  the run wrote). The lock of a run that died without removing it expires
  `LEASE_SECONDS` after its last renewal; the next run takes it over by itself and says so.
  A lock left by a process of this host that no longer exists is taken over at once.

`--takeover_lock` takes over a held lock (local: a fresh lock file; gs://: the object
replaced, again only if unchanged since read), except one whose process is alive on
this very host. A run whose lock was taken over notices it (local: its lock file is no
longer the one it locked; gs://: its renewal is refused) and stops before writing more,
with one line naming the new holder.

Multi-host runs take one lock, held by the lead host (process 0); every host stops
with the same line when it cannot be taken.
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from typing import Iterator, NamedTuple, Optional

import jax
from etils import epath

from tadax.errors import RunDirectoryError
from tadax.paths import is_remote
from tadax.train import hosts

LOCK_FILE = "run.lock"
# How long the lock of a gs:// run stays valid after its last renewal.
LEASE_SECONDS = 120.0
TAKEOVER_FLAG = "--takeover_lock"


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, another user's
        return True
    return True


class Holder:
    """Who holds a lock: `host`, `pid`, `since` (epoch seconds), a `token` per acquisition."""

    def __init__(self, host: str, pid: int, since: float, token: str):
        self.host, self.pid, self.since, self.token = host, pid, since, token

    @classmethod
    def me(cls) -> "Holder":
        return cls(socket.gethostname(), os.getpid(), time.time(), uuid.uuid4().hex)

    @classmethod
    def parse(cls, data: bytes) -> Optional["Holder"]:
        """The holder written in a lock's content; None when unreadable (being written)."""
        try:
            d = json.loads(data)
            return cls(str(d["host"]), int(d["pid"]), float(d["since"]), str(d["token"]))
        except (ValueError, KeyError, TypeError):
            return None

    def encode(self, **extra) -> bytes:
        return json.dumps(dict(host=self.host, pid=self.pid, since=self.since,
                               token=self.token, since_utc=_utc(self.since), **extra)).encode()

    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def __str__(self) -> str:
        return f"pid {self.pid} on host {self.host} since {_utc(self.since)}"


def _refusal(workdir, holder: Optional[Holder], where: str, extra: str = "") -> RunDirectoryError:
    who = f"another train.py ({holder})" if holder else "another train.py (starting up)"
    stop = (f"wait for it to end or stop it (kill {holder.pid} on {holder.host})" if holder
            else "wait for it to end or stop it")
    return RunDirectoryError(
        f"run directory {workdir} is in use by {who}, lock {where}{extra}: two runs in one "
        f"directory overwrite each other's checkpoints; {stop}. If that run is gone, rerun "
        f"with {TAKEOVER_FLAG} to take its lock over")


def _refuse_live_takeover(workdir, holder: Holder) -> None:
    if holder.on_this_host() and _process_alive(holder.pid):
        raise RunDirectoryError(
            f"{TAKEOVER_FLAG}: run directory {workdir} is locked by pid {holder.pid}, which is "
            f"alive on this host ({holder.host}, since {_utc(holder.since)}): stop it first "
            f"(kill {holder.pid}); {TAKEOVER_FLAG} takes over only the lock of a run that is gone")


class LocalLock:
    """`flock` on `WORKDIR/run.lock` (see the module docstring)."""

    def __init__(self, workdir: epath.Path):
        self.workdir = workdir
        self.path = os.fspath(workdir / LOCK_FILE)
        self.fd: Optional[int] = None
        self.holder = Holder.me()
        self.created_dir = False

    def _read_holder(self, fd: int) -> Optional[Holder]:
        return Holder.parse(os.pread(fd, 4096, 0))

    def acquire(self, takeover: bool) -> Optional[str]:
        if not self.workdir.exists():
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.created_dir = True
        note = None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read_holder(fd)
                os.close(fd)
                if not takeover or holder is None:
                    raise _refusal(self.workdir, holder, f"file {self.path}") from None
                _refuse_live_takeover(self.workdir, holder)
                # The old file stays locked by a process we cannot reach (another host of
                # a shared file system); a new file at the same name is a new lock.
                os.unlink(self.path)
                note = f"took over the lock of {self.workdir} from {holder} ({TAKEOVER_FLAG})"
                takeover = False
                continue
            # A holder that was ending may have removed the file between our open and lock.
            if self._same_file(fd):
                break
            os.close(fd)
        self.fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.holder.encode(), 0)
        os.fsync(fd)
        return note

    def _same_file(self, fd: int) -> bool:
        try:
            here, mine = os.stat(self.path), os.fstat(fd)
        except FileNotFoundError:
            return False
        return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)

    def check(self) -> None:
        if self.fd is None or self._same_file(self.fd):
            return
        try:
            with open(self.path, "rb") as f:
                holder = Holder.parse(f.read())
        except FileNotFoundError:
            holder = None
        raise RunDirectoryError(
            f"lost the lock of run directory {self.workdir}: taken over by "
            f"{holder or 'another run'}; stopping without writing more")

    def release(self) -> None:
        if self.fd is None:
            return
        if self._same_file(self.fd):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None
        if self.created_dir and not any(self.workdir.iterdir()):
            self.workdir.rmdir()   # a run refused right after taking the lock leaves nothing


class _Seen(NamedTuple):
    """A lock object as read: its holder (None: unreadable), generation, seconds since it
    was last written (server time) and the lease its holder stated."""
    holder: Optional[Holder]
    generation: int
    age: float
    lease: float


class GcsLock:
    """A leased lock object `gs://.../WORKDIR/run.lock` (see the module docstring)."""

    def __init__(self, workdir: epath.Path, lease_seconds: float = LEASE_SECONDS):
        from google.cloud import storage   # only gs:// runs need the client
        self.workdir = workdir
        bucket, _, prefix = os.fspath(workdir)[len("gs://"):].partition("/")
        self.name = f"{prefix.rstrip('/')}/{LOCK_FILE}" if prefix.strip("/") else LOCK_FILE
        self.url = f"gs://{bucket}/{self.name}"
        self.bucket = storage.Client(project=None).bucket(bucket)
        self.lease = lease_seconds
        self.holder = Holder.me()
        self.generation: Optional[int] = None
        self._lost: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _content(self) -> bytes:
        now = time.time()
        return self.holder.encode(lease_seconds=self.lease, renewed=now,
                                  expires_utc=_utc(now + self.lease))

    def _write(self, if_generation_match: int) -> None:
        blob = self.bucket.blob(self.name)
        blob.upload_from_string(self._content(), content_type="application/json",
                                if_generation_match=if_generation_match)
        self.generation = blob.generation

    def _current(self) -> Optional[_Seen]:
        """The lock object as it is now; None when there is none."""
        from google.api_core import exceptions
        while True:
            blob = self.bucket.get_blob(self.name)
            if blob is None:
                return None
            # Taken before the download, which may update the blob's fields from its reply.
            generation, updated = blob.generation, blob.updated
            try:
                data = blob.download_as_bytes(if_generation_match=generation)
                break
            except (exceptions.NotFound, exceptions.PreconditionFailed):
                continue   # replaced or removed while read: read it again
        age = (datetime.datetime.now(datetime.timezone.utc) - updated).total_seconds()
        try:
            lease = float(json.loads(data)["lease_seconds"])
        except (ValueError, KeyError, TypeError):
            lease = self.lease
        return _Seen(Holder.parse(data), generation, age, lease)

    def acquire(self, takeover: bool) -> Optional[str]:
        from google.api_core import exceptions
        for _ in range(5):   # each pass loses at most one race with another taker
            try:
                self._write(if_generation_match=0)
                self._start_renewal()
                return None
            except exceptions.PreconditionFailed:
                pass
            current = self._current()
            if current is None:
                continue
            holder, generation, age, lease = current
            if holder is not None and holder.token == self.holder.token:
                self.generation = generation   # our own create, retried after a lost reply
                self._start_renewal()
                return None
            if age > lease:
                why = f"its lease of {lease:.0f} s ran out {age - lease:.0f} s ago"
            elif holder is not None and holder.on_this_host() and not _process_alive(holder.pid):
                why = f"pid {holder.pid} no longer runs on this host"
            elif takeover and holder is not None:
                _refuse_live_takeover(self.workdir, holder)
                why = TAKEOVER_FLAG
            else:
                raise _refusal(self.workdir, holder, self.url,
                               f" (its lease runs out {lease - age:.0f} s from now unless renewed)")
            try:
                self._write(if_generation_match=generation)
            except exceptions.PreconditionFailed:
                continue   # someone else changed it meanwhile: look again
            self._start_renewal()
            return f"took over the lock of {self.workdir} from {holder or 'an unreadable lock'}: {why}"
        raise RunDirectoryError(f"could not take the lock {self.url}: it kept changing while read")

    def _start_renewal(self) -> None:
        self._last_renewal = time.monotonic()
        self._thread = threading.Thread(target=self._renew, name="run-lock-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        from google.api_core import exceptions
        while not self._stop.wait(self.lease / 4):
            try:
                self._write(if_generation_match=self.generation)
                self._last_renewal = time.monotonic()
            except exceptions.PreconditionFailed:
                current = self._current()
                self._lost = f"taken over by {(current and current.holder) or 'another run'}"
                return
            except Exception as e:   # network trouble: retried until the lease would run out
                if time.monotonic() - self._last_renewal > self.lease * 3 / 4:
                    why = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    self._lost = f"could not renew it for {self.lease * 3 / 4:.0f} s ({why})"
                    return

    def check(self) -> None:
        if self._lost:
            raise RunDirectoryError(f"lost the lock of run directory {self.workdir}: "
                                    f"{self._lost}; stopping without writing more")

    def release(self) -> None:
        from google.api_core import exceptions
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._lost is None:
            with contextlib.suppress(exceptions.NotFound, exceptions.PreconditionFailed):
                self.bucket.blob(self.name).delete(if_generation_match=self.generation)


class _NotLead:
    """What a host other than the lead holds: nothing to check or release."""

    def check(self) -> None:
        pass


def _lock_for(workdir: epath.Path):
    path = os.fspath(workdir)
    if path.startswith("gs://"):
        return GcsLock(workdir)
    if is_remote(path):
        raise RunDirectoryError(f"run directory {path}: only local paths and gs:// can be locked")
    return LocalLock(workdir)


@contextlib.contextmanager
def hold(workdir: epath.Path, takeover: bool = False) -> Iterator:
    """Holds the run directory's lock for the `with` block (lead host); yields an object
    whose `check()` raises `RunDirectoryError` once the lock was taken over.

    Raises `RunDirectoryError` (on every host) when another run holds it.
    """
    lock, error = _NotLead(), ""
    if jax.process_index() == 0:
        try:
            lock = _lock_for(workdir)
            note = lock.acquire(takeover)
            if note:
                print(note, flush=True)
        except RunDirectoryError as e:
            error = str(e)
        except Exception as e:   # e.g. no credentials for gs://, a read-only directory
            why = (str(e).strip().splitlines() or [""])[0]
            error = f"could not lock run directory {workdir}: {type(e).__name__}: {why}"
    error = hosts.lead_value("run_lock", error)
    if error:
        raise RunDirectoryError(error)
    try:
        yield lock
    finally:
        if not isinstance(lock, _NotLead):
            lock.release()
