"""Checkpoints of the classification trainer: written atomically (nst_det.engine.atomic), named
by epoch, and the choice of one to resume from.

``model_epoch_NNNN.pth`` is written every SOLVER.CHECKPOINT_PERIOD epochs and ``model_final.pth``
after the last; ``last_checkpoint`` names the newest complete one.
"""
import glob
import logging
import os
import re

from nst_det.engine.atomic import (
    LAST_CHECKPOINT,
    UnreadableCheckpointError,
    atomic_save,
    atomic_write_text,
    load_checkpoint,
    load_newest_readable,
    read_last_checkpoint,
)

__all__ = ["UnreadableCheckpointError", "load_checkpoint", "checkpoint_name", "ClsCheckpointer"]

logger = logging.getLogger(__name__)

_EPOCH_FILE = re.compile(r"model_epoch_(\d+)\.pth$")


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
        last = read_last_checkpoint(self.output_dir)
        paths = [last] if last else []
        by_epoch = []
        for p in glob.glob(os.path.join(self.output_dir, "model_*.pth")):
            m = _EPOCH_FILE.search(p)
            by_epoch.append((int(m.group(1)) if m else -1, os.path.getmtime(p), p))
        return paths + [p for _, _, p in sorted(by_epoch, reverse=True) if p not in paths]

    def load_latest(self):
        """``(path, checkpoint)`` of the newest readable checkpoint, or ``(None, None)`` if none.
        An unreadable newer file is reported by name and skipped (resume falls back, saying so)."""
        return load_newest_readable(
            self._candidates(), lambda p: load_checkpoint(p, source="tools/train_cls.py"),
            self.output_dir)
