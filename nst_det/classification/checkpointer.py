"""Atomic checkpoints of the classification trainer and the choice of one to resume from.

A checkpoint is written to a temporary file in the same folder, flushed, fsynced and renamed over
its final name (``os.replace``), so a reader sees either the old file or the whole new one. The
``last_checkpoint`` file, written the same way, names only a checkpoint that is complete.
"""
import glob
import logging
import os
import re
import tempfile

import torch

__all__ = [
    "UnreadableCheckpointError",
    "LAST_CHECKPOINT",
    "atomic_save",
    "atomic_write_text",
    "load_checkpoint",
    "checkpoint_name",
    "ClsCheckpointer",
]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
_EPOCH_FILE = re.compile(r"model_epoch_(\d+)\.pth$")


class UnreadableCheckpointError(RuntimeError):
    """A checkpoint file that is truncated, corrupt or not a checkpoint."""


def _atomic_write(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_save(obj, path: str) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary file: never a half-written ``path``."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str) -> None:
    """Write ``text`` to ``path`` through a temporary file."""
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def load_checkpoint(path: str) -> dict:
    """The checkpoint dict in ``path`` (on the CPU); a clear error when missing or unreadable."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, pickle garbage, wrong format
        raise UnreadableCheckpointError(
            f"checkpoint file '{path}' is truncated or unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UnreadableCheckpointError(
            f"checkpoint file '{path}' is not a checkpoint of tools/train_cls.py (no 'model' key)")
    return ckpt


def checkpoint_name(epoch: int, final: bool = False) -> str:
    """File name of the checkpoint written after ``epoch`` epochs."""
    return "model_final.pth" if final else f"model_epoch_{epoch:04d}.pth"


class ClsCheckpointer:
    """Saves checkpoints in ``output_dir`` (rank 0 only) and finds the one to resume from."""

    def __init__(self, output_dir: str, save_to_disk: bool = True):
        self.output_dir = output_dir
        self.save_to_disk = save_to_disk

    def save(self, name: str, state: dict) -> str:
        """Write ``state`` to ``output_dir/name`` atomically, then point ``last_checkpoint`` to it."""
        path = os.path.join(self.output_dir, name)
        if not self.save_to_disk:
            return path
        atomic_save(state, path)
        atomic_write_text(name, os.path.join(self.output_dir, LAST_CHECKPOINT))
        logger.info(f"Saved checkpoint {path}")
        return path

    def _candidates(self):
        """Checkpoint paths in ``output_dir``, newest first (last_checkpoint's, then by epoch)."""
        paths = []
        last = os.path.join(self.output_dir, LAST_CHECKPOINT)
        if os.path.isfile(last):
            with open(last, encoding="utf-8") as f:
                name = f.read().strip()
            if name:
                paths.append(os.path.join(self.output_dir, name))
        by_epoch = []
        for p in glob.glob(os.path.join(self.output_dir, "model_*.pth")):
            m = _EPOCH_FILE.search(p)
            by_epoch.append((int(m.group(1)) if m else -1, os.path.getmtime(p), p))
        for _, _, p in sorted(by_epoch, reverse=True):
            if p not in paths:
                paths.append(p)
        return paths

    def load_latest(self):
        """``(path, checkpoint)`` of the newest readable checkpoint, or ``(None, None)`` if none.

        An unreadable newer file is reported (error naming it) and skipped: resume falls back to
        the newest complete one, saying so. If files exist but none is readable, that is an error.
        """
        candidates = self._candidates()
        bad = []
        for path in candidates:
            try:
                ckpt = load_checkpoint(path)
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
                f"--resume: no readable checkpoint in '{self.output_dir}'; unreadable: "
                f"{', '.join(bad)}")
        return None, None
