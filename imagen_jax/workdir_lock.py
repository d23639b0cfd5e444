"""The workdir lock: a run that writes a workdir (train, encode_text) holds an OS-level lock on <workdir>/.lock from
start to exit, so a second writer is refused at once, before it touches a checkpoint or the metrics log:

    error: /tmp/qs is in use by pid 4242 (started 2026-01-05 14:03:11), a train run, ...; wait for it ...

The lock is fcntl.flock (Linux): the kernel releases it when its process ends, however it ends (a return, an
exception, SIGTERM, SIGKILL), so a dead run never leaves a stale lock behind. The file records the holder's pid,
host, start time and mode for that message; a clean release empties it, so a record found by the next holder is
that of a run that died holding it, which is reported as a note. The file descriptor is closed on exec and in
forked children (a data-loader worker never keeps a lock its parent held). Readers (sample, eval) take no lock:
they write only into their own folders (sample/, eval/).

Multi-process runs: only process 0 takes the lock (all processes share one workdir and one command line), and
its outcome is broadcast, so every process of a refused run stops with an error.

On a file system without flock (some FUSE mounts), the recorded pid stands in for the lock: a live process of
the same host that recorded itself is a holder, anything else is taken over, with a note.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from imagen_jax.errors import UserError

LOCK_FILE = ".lock"
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)

# File descriptors of the locks this process holds: a forked child closes its copies (which leaves the parent's
# lock in place), so that a child outliving its parent cannot keep the workdir locked.
_held: set[int] = set()


def _close_held_in_child() -> None:
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class WorkdirInUse(UserError):
    """Another run holds the workdir's lock."""


def _read_record(fd: int) -> dict | None:
    """The holder's record in the lock file, or None when it is empty or unreadable."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        record = json.loads(text) if text else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _describe(record: dict | None) -> str:
    """'pid 4242 (started 2026-01-05 14:03:11)', with the host when it is another one and the mode when known."""
    if not record:
        return "another process"
    host = record.get("host")
    where = f" on host {host}" if host and host != socket.gethostname() else ""
    started = f" (started {record['started']})" if record.get("started") else ""
    mode = f", a {record['mode']} run" if record.get("mode") else ""
    return f"pid {record.get('pid', '?')}{where}{started}{mode}"


def _alive_here(record: dict) -> bool:
    """Whether the record names a live process of this host (not this one)."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    if record["pid"] == os.getpid():
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire(workdir: str, mode: str) -> int:
    """Creates `workdir` if needed and locks it for this process; returns the lock file's descriptor (for
    release). WorkdirInUse names the holder when another run has it; UserError when the folder cannot be made."""
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {workdir}: {err.strerror or err}") from err
    path = os.path.join(workdir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirInUse(
                f"{workdir} is in use by {_describe(_holder_of_locked(fd))}, which is writing into it; wait "
                "for it to finish, or use another --workdir."
            ) from None
        except OSError as err:
            if err.errno not in _NO_FLOCK:
                raise
            record = _read_record(fd)
            if record and _alive_here(record):
                raise WorkdirInUse(
                    f"{workdir} is in use by {_describe(record)} (this file system has no locks; the pid in "
                    f"{path} says so). Wait for it to finish, or use another --workdir."
                ) from None
            print(f"Note: the file system of {workdir} has no file locks; {path} records this run instead.")
        previous = _read_record(fd)
        if previous and previous.get("pid") != os.getpid():
            print(
                f"Note: {workdir} was last locked by {_describe(previous)}, which ended without releasing it "
                "(killed?).",
                flush=True,
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(sep=" ", timespec="seconds"),
            "mode": mode,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    _held.add(fd)
    return fd


def _holder_of_locked(fd: int, wait_s: float = 1.0) -> dict | None:
    """The record of the process holding the lock; it writes the record just after locking, so an empty file is
    read again for up to wait_s seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        record = _read_record(fd)
        if record or time.monotonic() > deadline:
            return record
        time.sleep(0.05)


def release(fd: int) -> None:
    """Empties the record (a clean exit) and releases the lock."""
    _held.discard(fd)
    try:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass  # the kernel releases it with the descriptor anyway
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold(workdir: str, mode: str) -> Iterator[None]:
    """Holds the workdir's lock for the body of the `with` (taken by process 0; see the module's docstring).
    WorkdirInUse when another run holds it, on every process of this run."""
    fd, failure = None, None
    if jax.process_index() == 0:
        try:
            fd = acquire(workdir, mode)
        except BaseException as err:  # shared with the other processes below, then raised
            failure = err
    if jax.process_count() > 1:
        refused = int(multihost_utils.broadcast_one_to_all(np.int32(failure is not None)))
        if refused and failure is None:
            raise WorkdirInUse(f"{workdir}: process 0 could not lock it (its message says why).")
    if failure is not None:
        raise failure
    try:
        yield
    finally:
        if fd is not None:
            release(fd)
