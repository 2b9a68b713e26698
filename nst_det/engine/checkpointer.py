"""AtomicDetectionCheckpointer: Detectron2's DetectionCheckpointer with checkpoints that are never
half-written, errors that name the file, a ``--resume`` that falls back to the newest complete
checkpoint when the last one cannot be read, and ``MODEL.WEIGHTS`` refused when it leaves most of
the model unloaded (weights of another architecture, a classifier's checkpoint)."""
import glob
import os
import re
from typing import List

import torch
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

__all__ = ["AtomicDetectionCheckpointer", "WeightsMismatchError"]


class WeightsMismatchError(ValueError):
    """MODEL.WEIGHTS does not fit the model (most of it would stay at its initial values)."""


def _classifier_file_hint(path: str, checkpoint) -> str:
    """A sentence saying what ``checkpoint`` is when it holds a classifier, not a detector; ""."""
    if not isinstance(checkpoint, dict):
        return ""
    model = checkpoint.get("model", checkpoint)
    if not isinstance(model, dict):
        return ""
    keys = list(model)
    if {"epoch", "heads"} <= set(checkpoint) or any(k.startswith(("layer1.", "fc.")) for k in keys):
        return (f"'{path}' holds classifier weights (a checkpoint of tools/train_cls.py or a "
                f"torchvision state dict), not a Detectron2 model: convert it first with "
                f"`python tools/convert_cls_to_d2.py {path} OUT.pkl --fpn` and give OUT.pkl as "
                f"MODEL.WEIGHTS")
    return ""

def _torch_load_or_none(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # not a torch file either
        return None


# Files of Detectron2's PeriodicCheckpointer: model_0000099.pth ... and model_final.pth.
_ITERATION_FILE = re.compile(r"model_(\d+|final)\.pth$")


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose ``save`` writes a temporary file, flushes, fsyncs and renames it,
    then tags ``last_checkpoint`` the same way; a missing or unreadable file is an error naming it.

    ``weights_check`` decides what ``resume_or_load`` accepts as ``MODEL.WEIGHTS``: ``"partial"``
    (anything: Detectron2's behaviour), ``"most"`` (at least half of the model's tensors loaded:
    training from a backbone's weights) or ``"complete"`` (every tensor loaded: evaluation).
    """

    _WEIGHTS_CHECKS = ("partial", "most", "complete")

    def __init__(self, model, save_dir: str = "", *, weights_check: str = "partial", **kwargs):
        super().__init__(model, save_dir, **kwargs)
        if weights_check not in self._WEIGHTS_CHECKS:
            raise ValueError(f"weights_check must be one of {self._WEIGHTS_CHECKS}")
        self.weights_check = weights_check
        self._checking = None  # the MODEL.WEIGHTS file being loaded under weights_check

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
            checkpoint = super()._load_file(filename)
        except Exception as e:  # torch/pickle raise many types for a truncated or foreign file
            hint = _classifier_file_hint(filename, _torch_load_or_none(filename))
            if hint:
                raise WeightsMismatchError(hint) from e
            raise unreadable_checkpoint(filename, e) from e
        hint = _classifier_file_hint(filename, checkpoint)
        if hint:
            raise WeightsMismatchError(hint)
        return checkpoint

    def _load_model(self, checkpoint):
        in_file = len(checkpoint.get("model", {}))
        incompatible = super()._load_model(checkpoint)
        if self._checking is not None and self.weights_check != "partial":
            self._check_loaded(self._checking, incompatible, in_file)
        return incompatible

    def _check_loaded(self, path: str, incompatible, in_file: int) -> None:
        expected = [k for k in self.model.state_dict() if not k.endswith("num_batches_tracked")]
        missing = {k for k in incompatible.missing_keys if not k.endswith("num_batches_tracked")}
        loaded = len(expected) - len(missing)
        enough = not missing if self.weights_check == "complete" else 2 * loaded >= len(expected)
        if enough:
            return
        need = "every one" if self.weights_check == "complete" else "at least half"
        raise WeightsMismatchError(
            f"MODEL.WEIGHTS '{path}' fits {loaded} of the model's {len(expected)} tensors (the "
            f"file holds {in_file}: {len(incompatible.incorrect_shapes)} wrongly shaped, "
            f"{len(incompatible.unexpected_keys)} not in the model; first unloaded: "
            f"{sorted(missing)[:3]}); {need} must load. It was saved for another architecture or "
            f"config. Set MODEL.ALLOW_PARTIAL_WEIGHTS True to go on with a partly loaded model.")

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
        self._checking = path
        try:
            return self.load(path, checkpointables=[])
        except (FileNotFoundError, UnreadableCheckpointError) as e:
            raise type(e)(f"MODEL.WEIGHTS: {e}") from e
        finally:
            self._checking = None
