"""Files that are never half-written (checkpoints and every output of nst_det's tools), and the
choice of a checkpoint to resume from.

Used by both stages (the classification trainer and the Detectron2 trainer) and by the tools. A file
is written to a temporary file in the same folder, flushed, fsynced and renamed over its final name
(``os.replace``), so a reader sees either the old file or the whole new one; a full disk is an
OSError (ENOSPC) naming the final file, and leaves no temporary file behind. The
``last_checkpoint`` file, written the same way after its checkpoint, names only a complete file.
:func:`staged_outputs` does the same for files that another library writes into a folder itself
(Detectron2's COCO evaluator).
"""
import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
from typing import Callable, Iterable, Iterator, Optional, Tuple

import torch

__all__ = [
    "LAST_CHECKPOINT",
    "UnreadableCheckpointError",
    "atomic_save",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_figure",
    "staged_outputs",
    "unreadable_checkpoint",
    "load_checkpoint",
    "load_newest_readable",
]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"


class UnreadableCheckpointError(RuntimeError):
    """A checkpoint file that is truncated, corrupt or not a checkpoint."""


def _atomic_write(path: str, write: Callable) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if _is_disk_full(e):
            raise _disk_full(path) from e
        raise
    _fsync_folder(folder)


def _disk_full(path: str) -> OSError:
    return OSError(errno.ENOSPC, f"no space left on device while writing '{path}' "
                                 f"(nothing was replaced: the previous file, if any, is intact)")


def _fsync_folder(folder: str) -> None:
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _is_disk_full(error: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, also when torch's writer reports it as a RuntimeError."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    cause = error.__cause__ or error.__context__
    return (isinstance(error, RuntimeError) and cause is not None and cause is not error
            and _is_disk_full(cause))


def atomic_save(obj, path: str) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary file: never a half-written ``path``."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write(path: str, write: Callable) -> None:
    """Call ``write(f)`` with a binary file that becomes ``path`` once ``write`` returned (a
    picture: ``lambda f: image.save(f, format="PNG")``)."""
    _atomic_write(path, write)


def atomic_write_text(text: str, path: str) -> None:
    """Write ``text`` to ``path`` through a temporary file."""
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(obj, path: str, **dump_kwargs) -> None:
    """``json.dump(obj)`` to ``path`` through a temporary file."""
    atomic_write_text(json.dumps(obj, **dump_kwargs), path)


def atomic_save_figure(fig, path: str, **savefig_kwargs) -> None:
    """A matplotlib figure saved to ``path`` (format from its extension) through a temporary
    file."""
    image_format = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    _atomic_write(path, lambda f: fig.savefig(f, format=image_format, **savefig_kwargs))


@contextlib.contextmanager
def staged_outputs(folder: str) -> Iterator[str]:
    """A temporary folder inside ``folder`` for a block that writes files into it; when the block
    succeeds, each file is fsynced and renamed into ``folder`` (replacing the previous one). When it
    fails, nothing is moved (the previous files stay intact) and the temporary folder goes; a full
    disk is an OSError (ENOSPC) naming the final name of the file being written."""
    os.makedirs(folder, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging.", dir=folder)
    try:
        try:
            yield staging
        except BaseException as e:
            if _is_disk_full(e):
                written = sorted(os.scandir(staging), key=lambda d: d.stat().st_mtime_ns)
                name = written[-1].name if written else "?"
                raise _disk_full(os.path.join(folder, name)) from e
            raise
        for entry in os.scandir(staging):
            if entry.is_file():
                with open(entry.path, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(entry.path, os.path.join(folder, entry.name))
        _fsync_folder(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def unreadable_checkpoint(path: str, error: BaseException) -> UnreadableCheckpointError:
    """The error for a checkpoint file that ``torch.load``/``pickle`` could not read."""
    return UnreadableCheckpointError(
        f"checkpoint file '{path}' is truncated or unreadable ({type(error).__name__}: {error})")


def load_checkpoint(path: str, source: str = "nst_det") -> dict:
    """The checkpoint dict in ``path`` (on the CPU); a clear error when missing or unreadable.

    ``source`` names the tool whose checkpoints have a ``"model"`` key, for the error message.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, pickle garbage, wrong format
        raise unreadable_checkpoint(path, e) from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UnreadableCheckpointError(
            f"checkpoint file '{path}' is not a checkpoint of {source} (no 'model' key)")
    return ckpt


def load_newest_readable(candidates: Iterable[str], load: Callable[[str], object], folder: str
                         ) -> Tuple[Optional[str], object]:
    """``(path, load(path))`` of the first readable of ``candidates`` (newest first), or
    ``(None, None)`` when there are none.

    An unreadable file is reported (an error naming it) and skipped: resume falls back to the
    newest complete checkpoint, saying so. If files exist but none is readable, that is an error.
    """
    bad = []
    for path in candidates:
        try:
            ckpt = load(path)
        except (FileNotFoundError, UnreadableCheckpointError) as e:
            logger.error(str(e))
            bad.append(path)
            continue
        if bad:
            logger.warning(f"--resume: falling back to the newest complete checkpoint {path} "
                           f"(skipped unreadable: {', '.join(bad)})")
        return path, ckpt
    if bad:
        raise UnreadableCheckpointError(
            f"--resume: no readable checkpoint in '{folder}'; unreadable: {', '.join(bad)}")
    return None, None
