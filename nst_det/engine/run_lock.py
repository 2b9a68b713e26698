"""One training run per OUTPUT_DIR: a lock file that names its holder.

Both stages' trainers take it (on rank 0 only) before they build anything and give it back when
training ends, or at the latest when the process exits. The file, ``OUTPUT_DIR/run.lock``, holds
the holder's host, pid, start time and command line; it is created whole (written to a temporary
file, then hard-linked to its name, which fails when the name exists), so a reader never sees it
half-written. A second live run in the same folder is refused naming the holder. A lock whose
process is no longer alive on this host (a run killed by SIGKILL or a crash of the machine) is
taken over with a warning. A lock of another host cannot be checked: it is refused, and the message
says which file to delete when that run is over.

Taking the lock again in the process that holds it is allowed (trainers built one after the other
in one process); the file goes when the last holder gives it back.
"""
import atexit
import json
import logging
import os
import socket
import sys
import tempfile
import time
import weakref
from typing import Callable, Dict

__all__ = ["LOCK_FILE", "RunLockError", "acquire_run_lock", "release_run_lock", "hold_run_lock"]

logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"

_HELD: Dict[str, int] = {}  # lock path -> times taken by this process


class RunLockError(RuntimeError):
    """Another live run holds the OUTPUT_DIR."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _describe(holder: dict) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, started {when}: "
            f"{holder.get('command', '?')}")


def _read(path: str):
    try:
        with open(path) as f:
            holder = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise RunLockError(f"lock file '{path}' is unreadable ({type(e).__name__}: {e}); if no "
                           f"run uses its folder, delete it") from e
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
        raise RunLockError(f"lock file '{path}' is not a lock of nst_det ({holder!r}); if no run "
                           f"uses its folder, delete it")
    return holder


def _write_new(path: str, holder: dict) -> bool:
    """Create ``path`` holding ``holder``, whole; False when it exists."""
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{LOCK_FILE}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(holder, f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.remove(tmp)


def acquire_run_lock(output_dir: str) -> str:
    """Take the lock of ``output_dir`` for this process (created if needed); returns its path.
    RunLockError naming the holder when another live run holds it."""
    folder = os.path.abspath(output_dir)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    if path in _HELD:
        _HELD[path] += 1
        return path
    host, pid = socket.gethostname(), os.getpid()
    me = {"host": host, "pid": pid, "started": time.time(),
          "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    for _ in range(3):
        if _write_new(path, me):
            break
        holder = _read(path)
        if holder is None:  # given back meanwhile
            continue
        if holder.get("host") == host and holder["pid"] == pid:
            break  # this process, e.g. a lock left by a trainer built earlier here
        if holder.get("host") != host:
            raise RunLockError(
                f"OUTPUT_DIR '{output_dir}' is in use by a run on another host ({_describe(holder)})"
                f"; lock file '{path}'. Give another OUTPUT_DIR, or delete the lock file if that "
                f"run is over")
        if _alive(holder["pid"]):
            raise RunLockError(
                f"OUTPUT_DIR '{output_dir}' is in use by another run ({_describe(holder)}); lock "
                f"file '{path}'. Wait for it to end or give another OUTPUT_DIR")
        logger.warning(f"taking over the lock '{path}' of a run that is no longer alive "
                       f"({_describe(holder)})")
        os.remove(path)
    else:
        raise RunLockError(f"could not take the lock '{path}' (other runs keep taking it)")
    _HELD[path] = 1
    return path


def release_run_lock(path: str) -> None:
    """Give back a lock taken by :func:`acquire_run_lock`; the file goes with the last holder of
    this process (and only when it still names this process)."""
    if path not in _HELD:
        return
    _HELD[path] -= 1
    if _HELD[path] > 0:
        return
    del _HELD[path]
    try:
        holder = _read(path)
    except RunLockError:
        return
    if holder and holder["pid"] == os.getpid() and holder.get("host") == socket.gethostname():
        os.remove(path)


def hold_run_lock(owner, output_dir: str) -> Callable[[], None]:
    """On rank 0, take the lock of ``output_dir`` for ``owner`` (a trainer); returns the function
    that gives it back (also called when ``owner`` is garbage-collected, or at exit)."""
    from detectron2.utils import comm

    if not output_dir or not comm.is_main_process():
        return lambda: None
    return weakref.finalize(owner, release_run_lock, acquire_run_lock(output_dir))


@atexit.register
def _release_all() -> None:
    for path in list(_HELD):
        _HELD[path] = 1
        release_run_lock(path)
