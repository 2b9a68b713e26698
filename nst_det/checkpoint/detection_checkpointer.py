"""AtomicDetectionCheckpointer: Detectron2's DetectionCheckpointer with checkpoints that are never
half-written, errors that name the file, and a ``--resume`` that falls back to the newest complete
checkpoint when the last one cannot be read."""
import glob
import os
import re
from typing import List

from detectron2.checkpoint import DetectionCheckpointer

from .atomic import (
    LAST_CHECKPOINT,
    UnreadableCheckpointError,
    atomic_save,
    atomic_write_text,
    load_newest_readable,
    read_last_checkpoint,
    unreadable_checkpoint,
)

__all__ = ["AtomicDetectionCheckpointer"]

# Files of Detectron2's PeriodicCheckpointer: model_0000099.pth ... and model_final.pth.
_ITERATION_FILE = re.compile(r"model_(\d+|final)\.pth$")


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose ``save`` writes a temporary file, flushes, fsyncs and renames it,
    then tags ``last_checkpoint`` the same way; a missing or unreadable file is an error naming it."""

    def save(self, name: str, **kwargs) -> None:
        """Write the model, the checkpointables and ``kwargs`` to ``save_dir/name.pth`` atomically."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        if os.path.basename(path) != basename:
            raise ValueError(f"checkpoint name '{name}' must be a file name, not a path")
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_save(data, path)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Point ``save_dir/last_checkpoint`` at a complete checkpoint, atomically."""
        atomic_write_text(last_filename_basename, os.path.join(self.save_dir, LAST_CHECKPOINT))

    def _load_file(self, filename: str):
        try:
            return super()._load_file(filename)
        except Exception as e:  # torch/pickle raise many types for a truncated or foreign file
            raise unreadable_checkpoint(filename, e) from e

    def load(self, path: str, *args, **kwargs):
        """Same as DetectionCheckpointer.load; a local ``path`` that does not exist is a
        FileNotFoundError naming it (URLs are left to Detectron2's path manager)."""
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint file '{path}' does not exist")
        return super().load(path, *args, **kwargs)

    def resume_candidates(self) -> List[str]:
        """Checkpoints in ``save_dir``, newest first: the one ``last_checkpoint`` names, then
        ``model_final.pth`` and ``model_<iteration>.pth`` by decreasing iteration."""
        if not self.save_dir:
            return []
        paths = []
        tagged = read_last_checkpoint(self.save_dir)
        if tagged:
            paths.append(tagged)
        by_iteration = []
        for path in glob.glob(os.path.join(glob.escape(self.save_dir), "model_*.pth")):
            m = _ITERATION_FILE.search(path)
            if m:
                iteration = float("inf") if m.group(1) == "final" else int(m.group(1))
                by_iteration.append((iteration, path))
        for _, path in sorted(by_iteration, reverse=True):
            if path not in paths:
                paths.append(path)
        return paths

    def has_checkpoint(self) -> bool:
        """Whether ``save_dir`` holds a checkpoint to resume from."""
        return bool(self.resume_candidates())

    def resume_or_load(self, path: str, *, resume: bool = True):
        """With ``resume``, load everything from the newest readable checkpoint in ``save_dir``
        (saying so when a newer one was unreadable); otherwise the model alone from ``path``
        (MODEL.WEIGHTS)."""
        candidates = self.resume_candidates() if resume else []
        if candidates:
            _, checkpoint = load_newest_readable(candidates, self.load, self.save_dir)
            return checkpoint
        try:
            return self.load(path, checkpointables=[])
        except (FileNotFoundError, UnreadableCheckpointError) as e:
            raise type(e)(f"MODEL.WEIGHTS: {e}") from e
