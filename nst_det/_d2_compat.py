"""Compatibility of Detectron2 with this stack (torch >= 2, numpy >= 2, Python >= 3.11).

Each fix below is applied only when the installed Detectron2 shows the problem, detected by
behaviour or by the missing module, never by version string (the official latest Detectron2 also
calls itself 0.6). With an official, compiled, up-to-date Detectron2 nothing here changes anything.

- ``detectron2._C`` missing (pip install from the ``pb1-detectron2`` sdist): install
  :mod:`nst_det._d2_stand_in_C`, and a ``torch.ops.detectron2.nms_rotated`` that says why it fails.
- ``hooks.LRScheduler`` saves torch's own schedulers only if they derive from ``_LRScheduler``
  (torch >= 2 schedulers derive from ``LRScheduler``): their state was lost on ``--resume``.
- ``MapDataset``'s fallback calls ``Random.sample`` on a set, which Python >= 3.11 refuses.
- ``PascalVOCDetectionEvaluator`` uses ``np.bool``, which numpy 1.24 to 1.26 lack.

``APPLIED`` lists the names of the fixes that are active in this process.
"""
import importlib.util
import logging
import random
import sys
import types
import warnings

import numpy as np
import torch

__all__ = ["install", "APPLIED", "has_compiled_ops"]

logger = logging.getLogger(__name__)

APPLIED = []
_nms_rotated_library = None  # keeps the torch.library registration alive


def has_compiled_ops() -> bool:
    """True when the real compiled ``detectron2._C`` is importable (not the stand-in)."""
    module = sys.modules.get("detectron2._C")
    if module is not None:
        return not getattr(module, "IS_NST_DET_STAND_IN", False)
    return importlib.util.find_spec("detectron2._C") is not None


def _install_stand_in_C():
    """Put the stand-in in ``sys.modules`` before ``detectron2.layers`` first imports ``_C``."""
    if has_compiled_ops():
        return
    from nst_det import _d2_stand_in_C
    import detectron2

    sys.modules["detectron2._C"] = _d2_stand_in_C
    detectron2._C = _d2_stand_in_C
    _register_missing_nms_rotated()
    APPLIED.append("stand_in_C")
    logger.info("detectron2._C is missing: nst_det's stand-in is active (no rotated boxes, "
                "deformable conv or fast COCO evaluator).")


def _register_missing_nms_rotated():
    """``torch.ops.detectron2.nms_rotated`` that raises a clear error instead of a bare lookup."""
    global _nms_rotated_library
    if hasattr(torch.ops, "detectron2") and _has_op("nms_rotated"):
        return
    from nst_det._d2_stand_in_C import MissingCompiledOpError, missing_op_message

    def nms_rotated(boxes, scores, iou_threshold):
        raise MissingCompiledOpError(missing_op_message("nms_rotated"))

    lib = torch.library.Library("detectron2", "DEF")
    lib.define("nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms_rotated", nms_rotated, "CompositeExplicitAutograd")
    _nms_rotated_library = lib


def _has_op(name):
    try:
        getattr(torch.ops.detectron2, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def _fix_lr_scheduler_hook():
    """Save/load torch's built-in schedulers in ``hooks.LRScheduler`` (lost on resume otherwise)."""
    from detectron2.engine import hooks

    base = getattr(torch.optim.lr_scheduler, "LRScheduler", torch.optim.lr_scheduler._LRScheduler)
    probe_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    probe = torch.optim.lr_scheduler.MultiStepLR(probe_opt, milestones=[1])
    if hooks.LRScheduler(probe_opt, probe).state_dict():
        return  # this Detectron2 already saves torch schedulers

    def state_dict(self):
        if isinstance(self.scheduler, base):
            return self.scheduler.state_dict()
        return {}

    def load_state_dict(self, state_dict):
        if isinstance(self.scheduler, base):
            logging.getLogger("detectron2.engine.hooks").info(
                "Loading scheduler from state_dict ...")
            self.scheduler.load_state_dict(state_dict)

    hooks.LRScheduler.state_dict = state_dict
    hooks.LRScheduler.load_state_dict = load_state_dict
    APPLIED.append("lr_scheduler_hook")


class _SequenceSampler(random.Random):
    """``random.Random`` whose ``sample`` also accepts a set (sorted first, so it is reproducible)."""

    def sample(self, population, k, **kwargs):
        if isinstance(population, (set, frozenset)):
            population = sorted(population)
        return super().sample(population, k, **kwargs)


def _fix_map_dataset_fallback():
    """Let ``MapDataset`` fall back to another index on Python >= 3.11 (it samples from a set)."""
    try:
        random.Random(0).sample({0}, k=1)
        return  # this Python still accepts sets
    except TypeError:
        pass
    from detectron2.data import common

    original_init = common.MapDataset.__init__
    if getattr(original_init, "_nst_det_fixed", False):
        return

    def __init__(self, dataset, map_func):
        original_init(self, dataset, map_func)
        if isinstance(getattr(self, "_rng", None), random.Random):
            self._rng = _SequenceSampler(42)

    __init__._nst_det_fixed = True
    common.MapDataset.__init__ = __init__
    APPLIED.append("map_dataset_fallback")


def _fix_voc_evaluator_numpy():
    """Give v0.6's VOC evaluator an ``np`` with ``np.bool`` (removed in numpy 1.24 to 1.26)."""
    if hasattr(np, "bool"):
        return  # numpy < 1.24 and numpy >= 2 have it
    from detectron2.evaluation import pascal_voc_evaluation as voc

    import inspect

    if "np.bool)" not in inspect.getsource(voc):
        return
    numpy_with_bool = types.ModuleType("numpy")
    numpy_with_bool.__dict__.update(np.__dict__)
    numpy_with_bool.bool = bool
    voc.np = numpy_with_bool
    APPLIED.append("voc_evaluator_numpy")


_installed = False


def install():
    """Apply every fix this installation needs; safe to call more than once."""
    global _installed
    if _installed:
        return
    with warnings.catch_warnings():
        # Detectron2 scripts a few helpers with torch.jit.script at import time; torch >= 2.10
        # deprecates it. That is Detectron2's business, not the user's: keep the log clean.
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        _install_stand_in_C()
        _fix_lr_scheduler_hook()
        _fix_map_dataset_fallback()
        _fix_voc_evaluator_numpy()
    _installed = True
