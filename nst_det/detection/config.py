"""Every config key nst_det adds to Detectron2's config, with its default (``DISTILL``: the keys of
:mod:`nst_det.engine.distill_config`, shared with the classification stage, and the teacher's
config file).

``tools/train_net.py`` calls :func:`add_nst_config` right after ``get_cfg()`` (through
:func:`nst_det.detection.load_config.load_nst_cfg`); yaml files in ``configs/`` inherit through
``_BASE_`` and list only what they change.
"""
import re
from typing import Mapping

from detectron2.config import CfgNode as CN

from nst_det.engine.distill_config import add_distill_config, check_distill_config, nst_loss_kwargs

from .backbone.inception_bn import add_inception_bn_config
from .data.custom import add_custom_datasets_config
from .fcos import add_fcos_config

__all__ = ["add_nst_config", "distill_arguments", "distill_settings"]


def add_nst_config(cfg: CN) -> CN:
    """Add the distillation keys (``DISTILL``, shared with the classification stage, plus the
    detection-only ones), the keys of nst_det's backbones, of its config-registered data sets and
    of FCOS from yaml (``MODEL.FCOS``) to ``cfg``."""
    _C = cfg
    add_distill_config(_C)
    # Teacher detector's config file, relative to the yaml that names it: a Detectron2 yaml of a plain
    # detector (GeneralizedRCNN, RetinaNet, YamlFCOS), a LazyConfig .py (its `model`), or "zoo://" + a
    # config of Detectron2's model zoo (either kind). Required when a distillation weight is > 0.
    _C.DISTILL.TEACHER.CONFIG = ""
    # Matched levels of different strides: "" = an error naming both levels; "student_to_teacher" or
    # "teacher_to_student" = NST on the pair after a bilinear resize of one map to the other's size.
    _C.DISTILL.RESIZE = ""
    # Empty STUDENT_FEATURES: "name" = every backbone output both have, by name; "stride" = each
    # student backbone output with the teacher's output of the same stride (names may differ).
    _C.DISTILL.MATCH_LEVELS = "name"

    # Let MODEL.WEIGHTS leave most of the detector unloaded (a file of another architecture). By
    # default that is an error: training from it, or evaluating it, gives meaningless numbers.
    _C.MODEL.ALLOW_PARTIAL_WEIGHTS = False
    # Test sets whose thing_classes are the training sets' in another order: "" = an error naming
    # both lists; "by_name" = evaluate with the model's classes mapped to the test set's by name.
    _C.DATASETS.TEST_CLASS_MAP = ""

    # The student's convolution weights stored channels-last (NHWC); measured on the CPU: no
    # faster in float32, faster under SOLVER.AMP bf16 (docs/BENCHMARKS.md). The teacher's:
    # DISTILL.TEACHER.CHANNELS_LAST.
    _C.MODEL.CHANNELS_LAST = False
    # SOLVER.AMP.ENABLED on any device: "" = float16 (with a grad scaler) on CUDA, bfloat16 on the
    # CPU; "bf16" or "fp16" (CUDA only). Refused where the device lacks the type.
    _C.SOLVER.AMP.PRECISION = ""

    add_inception_bn_config(_C)
    add_custom_datasets_config(_C)
    add_fcos_config(_C)
    return _C


def distill_arguments(d) -> dict:
    """The constructor arguments of :class:`nst_det.detection.meta_arch.DistillDetector` (all but
    ``teacher``) that a ``DISTILL`` node sets: the one mapping of the yaml configs' ``DISTILL``
    (``DistillDetector.from_config``) and of a LazyConfig's ``distill`` section
    (:func:`distill_settings`, :mod:`nst_det.detection.lazy`)."""
    return dict(
        student_features=list(d.STUDENT_FEATURES),
        teacher_features=list(d.TEACHER_FEATURES),
        level_weights=list(d.LEVEL_WEIGHTS),
        nst_weight=d.NST.WEIGHT,
        **{f"nst_{name}": value for name, value in nst_loss_kwargs(d.NST).items()},
        kd_weight=d.KD.WEIGHT,
        kd_temperature=d.KD.TEMPERATURE,
        warmup_iters=d.WARMUP_ITERS,
        resize=d.RESIZE,
        match_levels=d.MATCH_LEVELS,
        teacher_precision=d.TEACHER.PRECISION,
        teacher_channels_last=d.TEACHER.CHANNELS_LAST,
        teacher_fold_norms=d.TEACHER.FOLD_NORMS,
    )


# DISTILL.TEACHER keys a LazyConfig's `distill` section takes (how the teacher runs); its config
# and weights are the model's `teacher` argument.
_LAZY_TEACHER_KEYS = ("PRECISION", "CHANNELS_LAST", "FOLD_NORMS")


def _as_plain(value):
    """A DictConfig / ListConfig as plain dicts and lists (interpolations resolved)."""
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover (Detectron2 needs omegaconf)
        return value
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _merge_settings(node: CN, settings: Mapping, key: str) -> None:
    for name, value in settings.items():
        path = f"{key}.{name}"
        if name not in node:
            raise KeyError(f"{path} is no distillation setting; {key} takes the DISTILL keys of the "
                           f"yaml configs: {sorted(node)} (table in docs/DISTILLATION.md)")
        if isinstance(node[name], CN):
            if not isinstance(value, Mapping):
                raise ValueError(f"{path} is {value!r}: it must be a dict of "
                                 f"{sorted(node[name])}")
            _merge_settings(node[name], value, path)
        else:
            node[name] = list(value) if isinstance(value, tuple) else value


def distill_settings(settings: Mapping, key: str = "distill") -> CN:
    """The ``DISTILL`` node of a LazyConfig's distillation settings ``settings`` (a dict or
    DictConfig with the yaml configs' ``DISTILL`` names: ``dict(NST=dict(WEIGHT=4.0),
    STUDENT_FEATURES=[...])``; ``key`` is where the config holds them): the defaults of
    :func:`add_nst_config` with ``settings`` merged in, checked by
    :func:`~nst_det.engine.distill_config.check_distill_config`. An unknown key is a KeyError,
    a bad value a ValueError, each naming ``key`` + the DISTILL name (``distill.NST.WEIGHT``)."""
    from detectron2.config import get_cfg

    settings = _as_plain(settings) if settings is not None else {}
    if not isinstance(settings, Mapping):
        raise ValueError(f"{key} is {settings!r}: it must be a dict of DISTILL settings, e.g. "
                         f"dict(NST=dict(WEIGHT=4.0))")
    other = sorted(set(settings.get("TEACHER") or {}) - set(_LAZY_TEACHER_KEYS))
    if other:
        raise KeyError(f"{key}.TEACHER.{other[0]}: the teacher of a LazyConfig student is the "
                       f"model's `teacher` argument, e.g. L(build_teacher_from_files)(config=..., "
                       f"weights=...) (nst_det.detection.lazy); {key}.TEACHER takes only "
                       f"{list(_LAZY_TEACHER_KEYS)}")
    cfg = add_nst_config(get_cfg())
    node = cfg.DISTILL
    _merge_settings(node, settings, key)
    try:
        check_distill_config(cfg)
    except ValueError as e:
        raise ValueError(lazy_key_message(str(e), key)) from e
    return node


def lazy_key_message(message: str, key: str = "distill") -> str:
    """``message`` with the yaml names ``DISTILL.X`` written as a LazyConfig's ``<key>.X``."""
    return re.sub(r"\bDISTILL\.", f"{key}.", message)
