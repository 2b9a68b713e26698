"""LazyConfig students and teachers: what a LazyConfig ``.py`` file of nst_det writes, and what
``tools/lazyconfig_train_net.py`` builds from it.

A distilled student in a LazyConfig is the student's own model node wrapped by
:func:`distill_model`, a teacher from :func:`build_teacher_from_files`, and the distillation
settings under the yaml configs' ``DISTILL`` names in a ``distill`` section::

    from detectron2.config import LazyCall as L
    from detectron2.model_zoo import get_config
    from nst_det.detection.lazy import build_teacher_from_files, distill_model

    _base = get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
    dataloader, optimizer, lr_multiplier, train = (_base.dataloader, _base.optimizer,
                                                   _base.lr_multiplier, _base.train)
    model = distill_model(_base.model, teacher=L(build_teacher_from_files)(
        config="zoo://new_baselines/mask_rcnn_R_101_FPN_100ep_LSJ.py", weights="teacher.pkl"))
    distill = dict(NST=dict(WEIGHT=4.0, KERNEL="poly"), STUDENT_FEATURES=["p2", "p3"])

The student's arguments stay where they were (``model.roi_heads.num_classes=20`` still
overrides them), the teacher's files are ``model.teacher.config`` / ``model.teacher.weights`` and
the settings ``distill.NST.WEIGHT``, ... Instantiating ``model`` gives the matching distilling
class of :mod:`nst_det.detection.meta_arch` (``DistillGeneralizedRCNN`` for a GeneralizedRCNN
student, ``DistillRetinaNet``, ``DistillFCOS``), its settings mapped by the one mapping of the
yaml configs (:func:`nst_det.detection.config.distill_arguments`). Those classes are
``@configurable``, so ``L(DistillGeneralizedRCNN)(teacher=..., nst_weight=..., **student
arguments)`` instantiates as well.
"""
import logging
from typing import Mapping, Optional

from detectron2.config import LazyCall as L
from detectron2.modeling import GeneralizedRCNN, RetinaNet
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.utils.registry import locate
from torch import nn

from .config import distill_arguments, distill_settings, lazy_key_message
from .fcos import YamlFCOS
from .meta_arch import DistillDetector, DistillFCOS, DistillGeneralizedRCNN, DistillRetinaNet
from .teacher import build_teacher_from_files

__all__ = ["distill_model", "distilled_model", "build_teacher_from_files", "student_node",
           "distill_class", "check_lazy_distill", "DISTILL_CLASSES", "SETTINGS"]

logger = logging.getLogger(__name__)

# The student's class -> the class that distils it (exact classes: a subclass of one of these
# may change what distillation relies on, so it gets its own Distill class, as in meta_arch).
DISTILL_CLASSES = {
    GeneralizedRCNN: DistillGeneralizedRCNN,
    RetinaNet: DistillRetinaNet,
    FCOS: DistillFCOS,
    YamlFCOS: DistillFCOS,
}
# Where distill_model reads the settings by default: the config's top-level `distill` section.
SETTINGS = "${distill}"
# The arguments of distilled_model that are not the student's.
_OWN_ARGUMENTS = ("student_class", "teacher", "distill", "distill_key")
# DistillDetector's own constructor arguments (the rest are the student's).
_DISTILL_ARGUMENTS = ("teacher", "student_features", "teacher_features", "level_weights",
                      "nst_weight", "nst_kernel", "nst_degree", "nst_coef", "nst_sigma2",
                      "kd_weight", "kd_temperature", "warmup_iters", "resize", "match_levels")


def _target(node):
    """The callable of a LazyCall node (its ``_target_``, a callable or its dotted name)."""
    target = node["_target_"]
    return locate(target) if isinstance(target, str) else target


def _name(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _arguments(node) -> dict:
    """The arguments of a LazyCall node, interpolations left unresolved."""
    items = node.items_ex(resolve=False) if hasattr(node, "items_ex") else node.items()
    return {k: v for k, v in items if k != "_target_"}


def distill_class(student_class) -> type:
    """The distilling class of ``student_class`` (a class or its dotted name); a ValueError
    naming the supported students otherwise."""
    cls = locate(student_class) if isinstance(student_class, str) else student_class
    if cls in DISTILL_CLASSES:
        return DISTILL_CLASSES[cls]
    if isinstance(cls, type) and issubclass(cls, DistillDetector):
        raise ValueError(f"model is already a distilling {cls.__name__}: give distill_model the "
                         f"student's own model node")
    raise ValueError(
        f"model: no distilling class for a {getattr(cls, '__name__', cls)} student; distill_model "
        f"knows {sorted(c.__name__ for c in DISTILL_CLASSES)} (another detector: "
        f"`class DistillX(DistillDetector, X)`, see nst_det.detection.meta_arch)")


def distill_model(model, teacher, settings=SETTINGS):
    """The LazyCall node of the distilled ``model`` (a student's LazyCall node: GeneralizedRCNN,
    RetinaNet, FCOS) taught by ``teacher`` (a LazyCall node such as
    ``L(build_teacher_from_files)(config=..., weights=...)``) with the distillation ``settings``
    (the yaml configs' ``DISTILL`` names; default: the config's ``distill`` section, or a dict).
    The student's arguments keep their places (``model.backbone...``)."""
    student_class = _target(model)
    distill_class(student_class)  # refuse an unknown student when the config is written
    arguments = _arguments(model)
    clash = sorted(set(arguments) & set(_OWN_ARGUMENTS))
    if clash:
        raise ValueError(f"model: the student's arguments {clash} clash with distill_model's")
    key = "distill" if settings == SETTINGS else "model.distill"
    return L(distilled_model)(student_class=_name(student_class), teacher=teacher,
                              distill=settings, distill_key=key, **arguments)


def distilled_model(*, student_class, teacher: Optional[nn.Module], distill: Optional[Mapping],
                    distill_key: str = "distill", **student_arguments) -> nn.Module:
    """The distilling detector (:func:`distill_class` of ``student_class``) of the student built
    from ``student_arguments``, taught by ``teacher``, with the distillation settings ``distill``
    (DISTILL names; checked, an error naming ``distill_key`` + the name). With every distillation
    weight 0 the teacher is left out and the student trains alone."""
    cls = distill_class(student_class)
    arguments = distill_arguments(distill_settings(distill, distill_key))
    if arguments["nst_weight"] <= 0 and arguments["kd_weight"] <= 0:
        teacher = None
    try:
        return cls(teacher=teacher, **arguments, **student_arguments)
    except (ValueError, KeyError) as e:
        message = e.args[0] if e.args else ""
        if isinstance(message, str) and "DISTILL." in message:
            raise type(e)(lazy_key_message(message, distill_key)) from e
        raise


def student_node(model):
    """The LazyCall node of the student alone (no teacher) of a model node: of
    :func:`distill_model`'s node, of an ``L(DistillX)(...)`` node, or ``model`` itself."""
    target = _target(model)
    arguments = _arguments(model)
    if target is distilled_model:
        cls = locate(arguments["student_class"]) if isinstance(arguments["student_class"], str) \
            else arguments["student_class"]
        return L(cls)(**{k: v for k, v in arguments.items() if k not in _OWN_ARGUMENTS})
    if isinstance(target, type) and issubclass(target, DistillDetector):
        plain = next(base for base in target.__mro__[1:]
                     if base is not DistillDetector and not issubclass(base, DistillDetector))
        return L(plain)(**{k: v for k, v in arguments.items() if k not in _DISTILL_ARGUMENTS})
    return model


def check_lazy_distill(cfg) -> None:
    """Check the distillation settings of ``cfg.model`` (a :func:`distill_model` node) before
    anything is built: an error naming the key (``distill.NST.WEIGHT``) for a bad one."""
    model = cfg.get("model") if hasattr(cfg, "get") else None
    if model is None or "_target_" not in model or _target(model) is not distilled_model:
        return
    distill_class(model["student_class"])
    key = model.get("distill_key", "distill")
    try:
        settings = model.get("distill")
    except Exception as e:  # omegaconf's interpolation errors: no `distill` section
        raise KeyError(f"model.distill is {SETTINGS!r} but the config has no `{key}` section: "
                       f"add one, e.g. distill = dict(NST=dict(WEIGHT=4.0)) ({e})") from e
    distill_settings(settings, key)
