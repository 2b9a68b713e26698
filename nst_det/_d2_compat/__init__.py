"""Compatibility of Detectron2 with this stack (torch >= 2, numpy >= 2, Python >= 3.11).

Each fix below is applied only when the installed Detectron2 shows the problem, detected by
behaviour or by the missing module, never by version string (the official latest Detectron2 also
calls itself 0.6). With an official, compiled, up-to-date Detectron2 nothing here changes anything.

- ``detectron2._C`` missing (pip install from the ``pb1-detectron2`` sdist): install
  :mod:`nst_det._d2_compat.stand_in_C`, and a ``torch.ops.detectron2.nms_rotated`` that says why it fails.
- ``hooks.LRScheduler`` saves torch's own schedulers only if they derive from ``_LRScheduler``
  (torch >= 2 schedulers derive from ``LRScheduler``): their state was lost on ``--resume``.
- ``MapDataset``'s fallback calls ``Random.sample`` on a set, which Python >= 3.11 refuses.
- Detectron2 v0.6 uses numpy's aliases of builtins (``np.str``, ``np.int``, ``np.float``,
  ``np.bool``, ``np.object``), removed in numpy 1.24 (numpy 2 has ``np.bool`` again): the built-in
  VOC sets fail to load (``np.str``), ``get_detection_dataset_dicts`` silently skips its class
  histogram (``np.int``), the VOC and semantic-segmentation evaluators, polygon masks and the
  visualizers fail. Each module of ``NUMPY_ALIAS_MODULES`` whose source uses an alias the installed
  numpy lacks gets, as its ``np``, a :class:`NumpyProxy`: numpy plus those aliases (the builtins).
  Numpy itself is left as it is.
- ``load_voc_instances`` cannot read a split that lists one image (``np.loadtxt`` gives a 0-d
  array for one line; Detectron2's main too): its ``np.loadtxt`` returns at least 1-d arrays.
- ``create_ddp_model`` passes ``device_ids=[local rank]``, which DistributedDataParallel refuses
  for a CPU module (gloo processes of ``--num-gpus N`` without CUDA): for a CPU module it passes
  none (probed by what it hands DistributedDataParallel for one).
- ``RetinaNetHead`` with ``norm="GN"`` (FCOS's head, as its LazyConfig builds it) asks
  ``get_norm("GN", 1)`` for the name of the norm type, a GroupNorm of 32 groups on 1 channel that
  torch >= 2 refuses: that probe gets a 32-channel GroupNorm (probed by building such a head).

``APPLIED`` lists the names of the fixes that are active in this process, e.g. ``"stand_in_C"``,
``"numpy_aliases:detectron2.data.datasets.pascal_voc"``.

- Detectron2 v0.6's ``launch`` asserts CUDA: :mod:`nst_det._d2_compat.cpu_launch` starts the
  gloo processes of ``--num-gpus N`` on a CPU itself (used by :mod:`nst_det.engine.launch`).

``install()`` is called in one place, ``nst_det/engine/__init__.py``, which both stages import
first: within it the stand-in ``_C`` is put in place before any fix imports a Detectron2 module
that imports ``detectron2.layers``. The fixes import only
Detectron2 modules (never nst_det's), so none of them can import nst_det half-initialised.
"""
import importlib
import importlib.util
import inspect
import logging
import os
import random
import re
import sys
import tempfile
import types
import warnings

import numpy as np
import torch

__all__ = ["install", "APPLIED", "has_compiled_ops", "NUMPY_ALIAS_MODULES", "NumpyProxy",
           "missing_numpy_aliases"]

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
    from nst_det._d2_compat import stand_in_C
    import detectron2

    sys.modules["detectron2._C"] = stand_in_C
    detectron2._C = stand_in_C
    _register_missing_nms_rotated()
    APPLIED.append("stand_in_C")
    logger.info("detectron2._C is missing: nst_det's stand-in is active (no rotated boxes, "
                "deformable conv or fast COCO evaluator).")


def _register_missing_nms_rotated():
    """``torch.ops.detectron2.nms_rotated`` that raises a clear error instead of a bare lookup."""
    global _nms_rotated_library
    if hasattr(torch.ops, "detectron2") and _has_op("nms_rotated"):
        return
    from nst_det._d2_compat.stand_in_C import MissingCompiledOpError, missing_op_message

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


#: numpy's aliases of Python builtins. numpy 1.24 removed them; numpy 2 brought back ``np.bool``
#: only (as numpy's own boolean type, which ``dtype=`` and ``astype`` treat like ``bool``).
NUMPY_ALIASES = {"str": str, "int": int, "float": float, "bool": bool, "object": object}

#: Detectron2 modules that nst_det, its tools or its users reach and whose v0.6 source uses an
#: alias of ``NUMPY_ALIASES`` (found by searching the whole v0.6 package):
#: ``pascal_voc`` (``np.str``: every built-in VOC set), ``build`` (``np.int``: the class histogram
#: of ``get_detection_dataset_dicts``), ``sem_seg_evaluation`` (``np.int``, ``np.float``),
#: ``pascal_voc_evaluation``, ``masks``, ``visualizer``, ``video_visualizer`` (``np.bool``).
NUMPY_ALIAS_MODULES = (
    "detectron2.data.build",
    "detectron2.data.datasets.pascal_voc",
    "detectron2.evaluation.pascal_voc_evaluation",
    "detectron2.evaluation.sem_seg_evaluation",
    "detectron2.structures.masks",
    "detectron2.utils.visualizer",
    "detectron2.utils.video_visualizer",
)


class NumpyProxy(types.ModuleType):
    """A module that is ``numpy`` plus a few attributes of its own (``vars(proxy)``); every other
    attribute is looked up in numpy at access time. Given to one Detectron2 module as its ``np``,
    it changes nothing for the rest of the process."""

    def __init__(self, attributes):
        super().__init__(np.__name__, np.__doc__)
        self.__dict__.update(attributes)

    def __getattr__(self, name):
        return getattr(np, name)


def _numpy_has(name, numpy_module=np) -> bool:
    with warnings.catch_warnings():
        # numpy >= 2.4 warns on np.str / np.object that they will become numpy's scalar types
        warnings.simplefilter("ignore")
        return hasattr(numpy_module, name)


def _numpy_names(module):
    """The names under which ``module`` binds numpy (or a :class:`NumpyProxy`), e.g. ``["np"]``."""
    return [k for k, v in vars(module).items() if v is np or isinstance(v, NumpyProxy)]


def missing_numpy_aliases(module, numpy_module=np):
    """The aliases ``module``'s source uses that ``numpy_module`` (the installed numpy by default)
    lacks, per name under which ``module`` binds numpy: ``{"np": ["str"]}`` for v0.6's
    ``pascal_voc`` on numpy 2; ``{}`` when nothing is missing (numpy < 1.24, or a Detectron2
    without the aliases, as on its main branch) or the source cannot be read."""
    names = _numpy_names(module)
    if not names:
        return {}
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        logger.debug("no source for %s: numpy aliases not checked", module.__name__)
        return {}
    missing = {}
    for name in names:
        used = set(re.findall(rf"\b{re.escape(name)}\.({'|'.join(NUMPY_ALIASES)})\b", source))
        lacking = sorted(a for a in used if not _numpy_has(a, numpy_module))
        if lacking:
            missing[name] = lacking
    return missing


def _numpy_proxy_of(module, name) -> NumpyProxy:
    """``module.<name>`` as a :class:`NumpyProxy`, installing a fresh one where it is numpy."""
    current = getattr(module, name)
    if not isinstance(current, NumpyProxy):
        current = NumpyProxy({})
        setattr(module, name, current)
    return current


def _applied(entry):
    if entry not in APPLIED:
        APPLIED.append(entry)


def _fix_numpy_aliases(module_names=NUMPY_ALIAS_MODULES):
    """Give each module whose source uses a numpy alias the installed numpy lacks a
    :class:`NumpyProxy` with those aliases (-> the builtins, as numpy < 1.24 had them)."""
    for module_name in module_names:
        module = importlib.import_module(module_name)
        for name, aliases in missing_numpy_aliases(module).items():
            proxy = _numpy_proxy_of(module, name)
            for alias in aliases:
                setattr(proxy, alias, NUMPY_ALIASES[alias])
            _applied(f"numpy_aliases:{module_name}")
            logger.debug("%s: %s.%s -> builtins", module_name, name, "/".join(aliases))


def _voc_split_of_one_image_fails(pascal_voc) -> bool:
    """Load a VOC folder whose split lists one image: ``np.loadtxt`` then gives a 0-d array,
    which Detectron2's ``load_voc_instances`` cannot iterate (``TypeError``)."""
    xml = ("<annotation><size><width>8</width><height>8</height></size><object><name>a</name>"
           "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax><ymax>4</ymax></bndbox></object>"
           "</annotation>")
    try:
        with tempfile.TemporaryDirectory(prefix="nst_det_voc_probe_") as root:
            for sub in ("Annotations", os.path.join("ImageSets", "Main")):
                os.makedirs(os.path.join(root, sub))
            with open(os.path.join(root, "Annotations", "1.xml"), "w") as f:
                f.write(xml)
            with open(os.path.join(root, "ImageSets", "Main", "probe.txt"), "w") as f:
                f.write("1\n")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return len(pascal_voc.load_voc_instances(root, "probe", ["a"])) != 1
    except TypeError:
        return True
    except Exception as e:  # e.g. no writable temporary directory: leave Detectron2 as it is
        logger.debug("VOC one-image split probe did not run: %s", e)
        return False


def _fix_voc_split_of_one_image():
    """Let ``load_voc_instances`` read a split that lists one image (its ``np.loadtxt`` gives
    a 0-d array for one line): its ``np.loadtxt`` returns at least 1-d arrays."""
    from detectron2.data.datasets import pascal_voc

    if not _voc_split_of_one_image_fails(pascal_voc):
        return
    names = _numpy_names(pascal_voc)

    def loadtxt(*args, **kwargs):
        return np.atleast_1d(np.loadtxt(*args, **kwargs))

    for name in names:
        _numpy_proxy_of(pascal_voc, name).loadtxt = loadtxt
    _applied("voc_split_of_one_image")


def _fix_create_ddp_model_on_cpu():
    """Let ``create_ddp_model`` wrap a CPU module (gloo processes without CUDA): it passes
    ``device_ids=[local rank]``, which DistributedDataParallel refuses for a CPU module."""
    from detectron2 import engine
    from detectron2.engine import defaults

    original = defaults.create_ddp_model
    if getattr(original, "_nst_det_fixed", False):
        return
    seen = {}

    class _Recorder:
        def __init__(self, module, **kwargs):
            seen.update(kwargs)

    saved = defaults.DistributedDataParallel, defaults.comm.get_world_size
    try:  # what does it pass for a CPU module in a 2-process job?
        defaults.DistributedDataParallel, defaults.comm.get_world_size = _Recorder, lambda: 2
        original(torch.nn.Linear(1, 1))
    except Exception:  # another signature: leave it alone
        return
    finally:
        defaults.DistributedDataParallel, defaults.comm.get_world_size = saved
    if seen.get("device_ids") is None:
        return  # this Detectron2 already handles CPU modules

    def create_ddp_model(model, **kwargs):
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        if on_cpu and "device_ids" not in kwargs:
            kwargs["device_ids"] = None
        return original(model, **kwargs)

    create_ddp_model._nst_det_fixed = True
    create_ddp_model.__doc__ = original.__doc__
    defaults.create_ddp_model = create_ddp_model
    if getattr(engine, "create_ddp_model", None) is original:
        engine.create_ddp_model = create_ddp_model
    APPLIED.append("create_ddp_model_cpu")


def _retinanet_head_refuses_group_norm(retinanet) -> bool:
    from detectron2.layers import ShapeSpec

    try:
        retinanet.RetinaNetHead(input_shape=[ShapeSpec(channels=32)], num_classes=1, num_anchors=1,
                                conv_dims=[32], norm="GN")
    except ValueError as e:
        return "num_groups" in str(e)
    return False


def _fix_retinanet_head_group_norm():
    """Let ``RetinaNetHead`` (and FCOSHead) take ``norm="GN"``: the type probe
    ``get_norm(norm, 1)`` in its ``__init__`` builds GroupNorm(32, 1), which torch refuses."""
    from detectron2.modeling.meta_arch import retinanet

    if getattr(retinanet.get_norm, "_nst_det_fixed", False):
        return
    if not _retinanet_head_refuses_group_norm(retinanet):
        return
    original = retinanet.get_norm

    def get_norm(norm, out_channels):
        if norm == "GN" and out_channels == 1:  # the type probe: any valid channel count
            out_channels = 32
        return original(norm, out_channels)

    get_norm._nst_det_fixed = True
    retinanet.get_norm = get_norm
    APPLIED.append("retinanet_head_group_norm")


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
        _install_stand_in_C()  # first: the modules below import detectron2.layers (-> _C)
        _fix_numpy_aliases()
        _fix_voc_split_of_one_image()
        _fix_lr_scheduler_hook()
        _fix_map_dataset_fallback()
        _fix_create_ddp_model_on_cpu()
        _fix_retinanet_head_group_norm()
    _installed = True
