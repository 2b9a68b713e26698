"""AtomicCheckpointer, the one checkpointer of both stages: Detectron2's DetectionCheckpointer (an
fvcore ``Checkpointer``) with checkpoints that are never half-written, errors that name the file, a
``--resume`` that falls back to the newest complete checkpoint when the last one cannot be read,
and weights refused when they leave the model (partly) unloaded; and :func:`load_weights_strictly`,
the one strict loader of a teacher's (or any fixed model's) weights."""
import hashlib
import os
import re
from typing import Callable, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

from nst_det.engine.config_paths import missing_path_message

from .atomic import (
    LAST_CHECKPOINT,
    UnreadableCheckpointError,
    atomic_save,
    atomic_write_text,
    load_newest_readable,
    unreadable_checkpoint,
)

__all__ = ["AtomicCheckpointer", "WeightsMismatchError", "load_weights_strictly",
           "weights_checksum", "folder_has_checkpoint", "check_eval_weights"]

_SHOWN_KEYS = 5


class WeightsMismatchError(ValueError):
    """A weights file does not fit the model it is loaded into."""


def weights_checksum(path: str, length: int = 12) -> str:
    """First ``length`` hex digits of the SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def _describe(keys) -> str:
    shown = ", ".join(str(k) for k in keys[:_SHOWN_KEYS])
    more = f", ... ({len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    return f"{len(keys)}: {shown}{more}"


def _torch_load_or_none(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # not a torch file either
        return None


# Files of Detectron2's PeriodicCheckpointer: model_0000099.pth ... and model_final.pth.
_ITERATION_FILE = re.compile(r"model_(\d+|final)\.pth$")


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose ``save`` writes a temporary file, flushes, fsyncs and renames it,
    then tags ``last_checkpoint`` the same way; a missing or unreadable file is an error naming it.

    ``weights_check`` decides what ``resume_or_load`` accepts as initial weights (``MODEL.WEIGHTS``):
    ``"partial"`` (anything: Detectron2's behaviour), ``"most"`` (at least half of the model's
    tensors loaded: training from a backbone's weights), ``"complete"`` (every tensor loaded:
    evaluation) or ``"strict"`` (every tensor, nothing left over, every shape right: a teacher).
    ``weights_key`` names the config key of those weights in the messages. ``foreign_file_hint(path,
    checkpoint)`` may return a sentence saying the file is of another kind (then an error);
    ``weights_what`` and ``loaded_into`` word the "strict" mismatch message.

    The checks extend fvcore's ``_load_file`` / ``_load_model``, the two methods fvcore's Checkpointer
    documents for subclasses (Detectron2's DetectionCheckpointer extends the same two).
    """

    _WEIGHTS_CHECKS = ("partial", "most", "complete", "strict")

    def __init__(self, model, save_dir: str = "", *, weights_check: str = "partial",
                 weights_key: str = "MODEL.WEIGHTS",
                 foreign_file_hint: Optional[Callable[[str, object], str]] = None,
                 weights_what: str = "weights file", loaded_into: str = "", **kwargs):
        super().__init__(model, save_dir, **kwargs)
        if weights_check not in self._WEIGHTS_CHECKS:
            raise ValueError(f"weights_check must be one of {self._WEIGHTS_CHECKS}")
        self.weights_check = weights_check
        self.weights_key = weights_key
        self.foreign_file_hint = foreign_file_hint
        self.weights_what = weights_what  # what the file is, in "strict" messages
        self.loaded_into = loaded_into or f"the model it is loaded into ({type(model).__name__})"
        self._checking = None  # the initial-weights file being loaded under weights_check
        self._resuming = False  # _checking is a checkpoint of save_dir (--resume)

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

    def _hint(self, path: str, checkpoint) -> str:
        return self.foreign_file_hint(path, checkpoint) if self.foreign_file_hint else ""

    def _load_file(self, filename: str):
        try:
            checkpoint = super()._load_file(filename)
        except Exception as e:  # torch/pickle raise many types for a truncated or foreign file
            hint = self._hint(filename, _torch_load_or_none(filename))
            if hint:
                raise WeightsMismatchError(hint) from e
            raise unreadable_checkpoint(filename, e) from e
        hint = self._hint(filename, checkpoint)
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
        if self.weights_check == "strict":
            self._check_strict(path, incompatible)
            return
        expected = [k for k in self.model.state_dict() if not k.endswith("num_batches_tracked")]
        missing = {k for k in incompatible.missing_keys if not k.endswith("num_batches_tracked")}
        loaded = len(expected) - len(missing)
        complete = self.weights_check == "complete" or self._resuming
        enough = not missing if complete else 2 * loaded >= len(expected)
        if enough:
            return
        need = "every one" if complete else "at least half"
        if self._resuming:
            raise WeightsMismatchError(
                f"--resume: checkpoint '{path}' in OUTPUT_DIR '{self.save_dir}' fits {loaded} of "
                f"the model's {len(expected)} tensors (the file holds {in_file}: "
                f"{len(incompatible.incorrect_shapes)} wrongly shaped, "
                f"{len(incompatible.unexpected_keys)} not in the model; first unloaded: "
                f"{sorted(missing)[:3]}); every one must load. It is a checkpoint of another "
                f"architecture or data set: give this config another OUTPUT_DIR, or drop --resume")
        raise WeightsMismatchError(
            f"{self.weights_key} '{path}' fits {loaded} of the model's {len(expected)} tensors (the "
            f"file holds {in_file}: {len(incompatible.incorrect_shapes)} wrongly shaped, "
            f"{len(incompatible.unexpected_keys)} not in the model; first unloaded: "
            f"{sorted(missing)[:3]}); {need} must load. It was saved for another architecture or "
            f"config. Set MODEL.ALLOW_PARTIAL_WEIGHTS True to go on with a partly loaded model.")

    def _check_strict(self, path: str, incompatible) -> None:
        # A wrongly shaped key is left out of the load, so it is also "missing": name it once, as
        # wrongly shaped. BatchNorm's step counters carry no weights: other frameworks' files lack
        # them, and a model trained with BN has them where its frozen copy (FrozenBN) has none.
        wrong_shape = {k for k, _, _ in incompatible.incorrect_shapes}
        missing = [k for k in incompatible.missing_keys
                   if not k.endswith("num_batches_tracked") and k not in wrong_shape]
        unexpected = [k for k in incompatible.unexpected_keys
                      if not k.endswith("num_batches_tracked")]
        shapes = [f"{k} (file {tuple(a)}, model {tuple(b)})"
                  for k, a, b in incompatible.incorrect_shapes]
        problems = []
        if missing:
            problems.append(f"missing keys {_describe(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_describe(unexpected)}")
        if shapes:
            problems.append(f"wrongly shaped keys {_describe(shapes)}")
        if problems:
            raise WeightsMismatchError(
                f"{self.weights_what} '{path}' ({self.weights_key}) does not match "
                f"{self.loaded_into}: " + "; ".join(problems) + ". Check that the config and the "
                "weights belong to the same model.")

    def load(self, path: str, *args, **kwargs):
        """Same as DetectionCheckpointer.load; a local ``path`` that does not exist is a
        FileNotFoundError naming it (URLs are left to Detectron2's path manager)."""
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint file '{path}' does not exist")
        try:
            return super().load(path, *args, **kwargs)
        except BaseException:
            # Detectron2's main sets _parsed_url_during_load while loading and clears it only
            # after a success (v0.6 has no such state); the next load, the fallback of --resume
            # to an older checkpoint, would fail its assert.
            if getattr(self, "_parsed_url_during_load", None) is not None:
                self._parsed_url_during_load = None
            raise

    def resume_candidates(self) -> List[str]:
        """Checkpoints in ``save_dir``, newest first: the one ``last_checkpoint`` names, then
        ``model_final.pth`` and ``model_<iteration>.pth`` by decreasing iteration (fvcore's
        ``get_checkpoint_file`` and ``get_all_checkpoint_files``)."""
        if not self.save_dir or not self.path_manager.isdir(self.save_dir):
            return []
        paths = []
        tagged = self.get_checkpoint_file()  # "" without a tag, save_dir/ for an empty one
        if os.path.basename(tagged):
            paths.append(tagged)
        by_iteration = []
        for path in self.get_all_checkpoint_files():
            name = os.path.basename(path)
            m = _ITERATION_FILE.search(name) if name.startswith("model_") else None
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

    def _load_resumed(self, path: str):
        """``load(path)`` of a checkpoint of ``save_dir`` (``--resume``), its model checked as
        MODEL.WEIGHTS is (at least "complete": a checkpoint of the same run holds every tensor;
        nothing checked under "partial"), before the optimizer and the other checkpointables."""
        self._checking, self._resuming = path, True
        try:
            return self.load(path)
        finally:
            self._checking, self._resuming = None, False

    def resume_or_load(self, path: str, *, resume: bool = True):
        """With ``resume``, load everything from the newest readable checkpoint in ``save_dir``
        (saying so when a newer one was unreadable); otherwise the model alone from ``path``
        (MODEL.WEIGHTS)."""
        candidates = self.resume_candidates() if resume else []
        if candidates:
            _, checkpoint = load_newest_readable(candidates, self._load_resumed, self.save_dir)
            return checkpoint
        self._checking = path
        try:
            return self.load(path, checkpointables=[])
        except (FileNotFoundError, UnreadableCheckpointError) as e:
            raise type(e)(f"{self.weights_key}: {e}") from e
        finally:
            self._checking = None


def folder_has_checkpoint(folder: str) -> bool:
    """Whether ``folder`` holds a checkpoint that ``--resume`` would load."""
    return AtomicCheckpointer(torch.nn.Module(), folder).has_checkpoint()


def check_eval_weights(weights: str, weights_key: str, output_dir: str, resume: bool) -> None:
    """ValueError naming ``weights_key`` / OUTPUT_DIR when ``--eval-only`` would score a model
    with nothing loaded: ``weights`` empty without ``resume``, or ``resume`` in an ``output_dir``
    without a checkpoint and ``weights`` empty (with ``weights``, --resume falls back to them)."""
    if resume:
        if weights or folder_has_checkpoint(output_dir):
            return
        raise ValueError(
            f"--eval-only --resume: OUTPUT_DIR '{output_dir}' holds no checkpoint and "
            f"{weights_key} is empty: there are no weights to evaluate (a model with random "
            f"weights would be scored). Give the OUTPUT_DIR of a trained run, or {weights_key} "
            f"FILE")
    if not weights:
        raise ValueError(
            f"--eval-only: {weights_key} is empty: there are no weights to evaluate (a model with "
            f"random weights would be scored). Give {weights_key} FILE, or --resume to evaluate "
            f"the newest checkpoint of OUTPUT_DIR")


def load_weights_strictly(model, path: str, key: str, what: str = "weights file",
                          loaded_into: str = "") -> None:
    """Load the weights file ``path`` (named by the config key ``key``; ``what`` it is) into
    ``model``, strictly: every tensor loaded, nothing left over, every shape right (a model-zoo
    ``.pkl``, a checkpoint of either stage's tool or a plain state dict); otherwise an error
    naming the key and the file, and ``loaded_into`` (what the model was built from)."""
    if not path:
        raise ValueError(f"{key} is empty: a teacher with random weights teaches nothing. Train "
                         f"the teacher first and give the file of its weights.")
    if not os.path.isfile(path):
        raise FileNotFoundError(missing_path_message(key, path, what=what))
    checkpointer = AtomicCheckpointer(model, weights_check="strict", weights_key=key,
                                      weights_what=what, loaded_into=loaded_into)
    try:
        checkpointer.resume_or_load(path, resume=False)
    except UnreadableCheckpointError as e:
        raise WeightsMismatchError(f"cannot read {what} '{path}' ({key}): {e}") from e
