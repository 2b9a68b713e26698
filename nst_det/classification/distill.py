"""The student and the frozen teacher of the classification stage, and the loss dict they give.

``build_distillation(cfg, input_shape, with_teacher)`` returns ``(student, teacher)``:

- ``DistillationStudent`` is everything that trains: the student classifier, its feature taps and
  the parameters of the distillation losses (FitNet's 1x1 regressors). Only it goes to the
  optimizer, to ``DistributedDataParallel`` and to checkpoints.
- ``FrozenTeacher`` is always in eval mode, has ``requires_grad=False`` and runs under
  ``torch.no_grad()``; it is never wrapped by DDP and never saved with the student. Its forward
  runs in the precision of ``DISTILL.TEACHER.PRECISION`` (:func:`teacher_dtype`, set by
  :func:`prepare_teacher`) and gives the losses float32 whatever it ran in.

``distillation_losses(student, teacher, images, targets, distill_scale)`` gives
``{"loss_cls", "loss_nst", "loss_kd", "loss_at", "loss_fitnet"}`` (only the enabled terms), each
already multiplied by its config weight (and by the warm-up factor ``distill_scale``).
"""
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from nst_det import losses as L
from nst_det.engine.checkpointer import load_weights_strictly, weights_checksum
from nst_det.engine.frozen import fold_frozen_norms, freeze
from nst_det.engine.distill_config import check_distill_config, check_feature_lists, nst_loss_kwargs
from nst_det.engine.precision import autocast, float32_outputs, precision_dtype, to_channels_last

__all__ = [
    "DistillationStudent",
    "FrozenTeacher",
    "teacher_dtype",
    "prepare_teacher",
    "build_distillation",
    "distillation_losses",
    "distill_terms",
    "tap_layers",
    "build_role_net",
]

logger = logging.getLogger(__name__)

# loss name -> config node of its weight
_DISTILL_TERMS = ("nst", "kd", "at", "fitnet")
_FEATURE_TERMS = ("nst", "at", "fitnet")


def distill_terms(cfg):
    """Names of the distillation terms whose weight is > 0, e.g. ``["nst", "kd"]``; a negative or
    non-finite weight is a ValueError naming its key (see check_distill_config)."""
    check_distill_config(cfg)
    return [t for t in _DISTILL_TERMS if cfg.DISTILL[t.upper()].WEIGHT > 0]


def _as_layer_list(layers):
    if isinstance(layers, str):
        return [layers]
    return list(layers)


def _check_spatial(student_layers, teacher_layers, s_feats, t_feats):
    """ValueError naming both layers when a student/teacher pair differs in H x W."""
    for sl, tl in zip(student_layers, teacher_layers):
        s, t = s_feats[sl], t_feats[tl]
        if s.shape[-2:] != t.shape[-2:]:
            raise ValueError(
                f"student layer '{sl}' gives {tuple(s.shape)} but teacher layer '{tl}' gives "
                f"{tuple(t.shape)}: NST/AT/FitNet need the same spatial size H x W "
                f"(choose other DISTILL.STUDENT_FEATURES / DISTILL.TEACHER_FEATURES or input size)")


class FrozenTeacher(nn.Module):
    """The teacher's feature taps, frozen: eval mode always, no grad, never trained.

    ``dtype`` (None = float32; torch.bfloat16 or torch.float16; ``AS_STUDENT`` = as the student's
    step) is the autocast dtype of its forward, on the device of the images; None turns autocast
    off inside the teacher, so a float32 teacher stays float32 under the student's SOLVER.AMP. The
    logits and features it returns are float32 in every case."""

    def __init__(self, taps: nn.Module, layers, dtype=None):
        super().__init__()
        self.taps = taps
        self.layers = list(layers)
        self.dtype = dtype
        freeze(self)

    def train(self, mode: bool = True):
        """Stays in eval mode whatever ``mode`` says (BatchNorm keeps its running statistics)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images):
        """images [N, 3, H, W] -> (logits [N, K], {layer: [N, C_T, h, w]}), float32."""
        with autocast(self.dtype, images.device):
            out = self.taps(images)
        return float32_outputs(out)


def teacher_dtype(cfg, device):
    """The autocast dtype of the teacher's forward on ``device`` (None = float32, ``AS_STUDENT`` for
    "") from DISTILL.TEACHER.PRECISION; a ValueError naming the key where the device cannot run it ("fp16"
    off CUDA, "bf16" without bfloat16 arithmetic)."""
    return precision_dtype(cfg.DISTILL.TEACHER.PRECISION, device, "DISTILL.TEACHER.PRECISION")


def prepare_teacher(teacher: FrozenTeacher, cfg, device) -> FrozenTeacher:
    """``teacher`` (already on ``device``) set to run in DISTILL.TEACHER.PRECISION, its norms
    folded into its convolutions when DISTILL.TEACHER.FOLD_NORMS (not where that would change a
    tapped layer's output), its weights channels-last when DISTILL.TEACHER.CHANNELS_LAST."""
    teacher.dtype = teacher_dtype(cfg, device)
    if cfg.DISTILL.TEACHER.FOLD_NORMS:
        fold_frozen_norms(teacher.taps.model, keep=teacher.layers)
    if cfg.DISTILL.TEACHER.CHANNELS_LAST:
        to_channels_last(teacher)
    return teacher


class DistillationStudent(nn.Module):
    """The trainable module: the student classifier (``.classifier``), its taps and loss heads.

    ``forward(images, targets, teacher_outputs, distill_scale)`` returns the weighted loss dict.
    """

    def __init__(self, classifier: nn.Module, taps: nn.Module, student_layers, teacher_layers,
                 cfg, heads: nn.ModuleDict):
        super().__init__()
        self.classifier = classifier
        self.taps = taps
        self.student_layers = list(student_layers)
        self.teacher_layers = list(teacher_layers)
        # Weight of each tapped pair in the feature terms (DISTILL.LEVEL_WEIGHTS, [] = 1.0 each).
        self.level_weights = [float(w) for w in cfg.DISTILL.LEVEL_WEIGHTS] or [1.0] * len(
            self.student_layers)
        # Parameters that the distillation losses learn (FitNet regressors), saved with the student.
        self.heads = heads
        self.terms = distill_terms(cfg)
        self.weights = {t: float(cfg.DISTILL[t.upper()].WEIGHT) for t in self.terms}
        self.nst_kwargs = nst_loss_kwargs(cfg.DISTILL.NST)
        self.kd_temperature = float(cfg.DISTILL.KD.TEMPERATURE)
        self.at_p = cfg.DISTILL.AT.P

    def student_state_dict(self) -> dict:
        """What a checkpoint keeps of the student: the classifier and the loss heads."""
        return {"model": self.classifier.state_dict(), "heads": self.heads.state_dict()}

    def load_student_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`student_state_dict` (strict)."""
        self.classifier.load_state_dict(state["model"])
        self.heads.load_state_dict(state.get("heads", {}))

    def forward(self, images, targets, teacher_outputs=None, distill_scale: float = 1.0):
        """images [N, 3, H, W], targets [N] -> {"loss_cls": ..., "loss_<term>": ...} (scalars)."""
        if self.taps is None:
            logits, feats = self.classifier(images), {}
        else:
            logits, feats = self.taps(images)
        out = {"loss_cls": F.cross_entropy(logits, targets)}
        if not self.terms:
            return out
        if teacher_outputs is None:
            raise ValueError(f"distillation terms {self.terms} are on but no teacher output given")
        t_logits, t_feats = teacher_outputs
        if any(t in _FEATURE_TERMS for t in self.terms):
            _check_spatial(self.student_layers, self.teacher_layers, feats, t_feats)
        pairs = [(feats[s], t_feats[t]) for s, t in zip(self.student_layers, self.teacher_layers)]
        for term in self.terms:
            value = L.loss_or_nan(lambda: self._term(term, logits, t_logits, pairs), logits,
                                  f" (loss_{term})")
            out[f"loss_{term}"] = self.weights[term] * distill_scale * value
        return out

    def _term(self, term, logits, t_logits, pairs):
        """Value of one distillation term before its weight: for the feature terms, the sum over
        the tapped layer pairs weighted by DISTILL.LEVEL_WEIGHTS."""
        if term == "kd":
            return L.kd_loss(logits, t_logits, temperature=self.kd_temperature)
        if term == "nst":
            values = [L.nst_loss(s, t, **self.nst_kwargs) for s, t in pairs]
        elif term == "at":
            values = [L.at_loss(s, t, p=self.at_p) for s, t in pairs]
        else:  # fitnet
            values = [head(s, t) for head, (s, t) in zip(self.heads["fitnet"], pairs)]
        return sum(w * v for w, v in zip(self.level_weights, values))


def distillation_losses(student, teacher, images, targets, distill_scale: float = 1.0):
    """Loss dict of one batch: the teacher (no grad) then ``student`` (a DistillationStudent, bare
    or wrapped by DDP). images [N, 3, H, W], targets [N]."""
    teacher_outputs = teacher(images) if teacher is not None else None
    return student(images, targets, teacher_outputs, distill_scale)


def _build_taps(net, layers, key):
    from nst_det.classification.taps import FeatureTaps

    try:
        return FeatureTaps(net, layers)
    except (KeyError, ValueError, AttributeError) as e:
        raise type(e)(f"{key} {layers}: {e}") from e


def build_role_net(cfg, role: str, weights=None):
    """The classifier of ``role``: "student" (MODEL.STUDENT) or "teacher" (DISTILL.TEACHER), with
    ``weights`` loaded strictly (None: the config's MODEL.STUDENT.WEIGHTS / DISTILL.TEACHER.WEIGHTS;
    "": random initialisation; a file given here is named "<role> checkpoint" in errors)."""
    from nst_det.classification.models import build_classifier

    node, key = ((cfg.MODEL.STUDENT, "MODEL.STUDENT.WEIGHTS") if role == "student"
                 else (cfg.DISTILL.TEACHER, "DISTILL.TEACHER.WEIGHTS"))
    name = node.NAME
    if weights is None:
        weights = node.WEIGHTS
    else:
        key = f"{role} checkpoint"
    net = build_classifier(name, cfg.MODEL.NUM_CLASSES)
    if weights:
        load_weights_strictly(net, weights, key, what=f"{role} weights file",
                              loaded_into=f"the {role} {name}")
        logger.info(f"{role} {name}: weights {weights} (sha256 {weights_checksum(weights)})")
    else:
        logger.info(f"{role} {name}: random initialisation")
    return net


def tap_layers(cfg, role: str):
    """Layers tapped for ``role`` ("student" or "teacher"): DISTILL.STUDENT_FEATURES /
    DISTILL.TEACHER_FEATURES, or the network's default tap when that list is empty."""
    from nst_det.classification.taps import default_tap

    if role == "student":
        layers, name = cfg.DISTILL.STUDENT_FEATURES, cfg.MODEL.STUDENT.NAME
    else:
        layers, name = cfg.DISTILL.TEACHER_FEATURES, cfg.DISTILL.TEACHER.NAME
    return _as_layer_list(layers) if len(layers) else _as_layer_list(default_tap(name))


def build_distillation(cfg, input_shape=(3, 224, 224), with_teacher: bool = True):
    """``(DistillationStudent, FrozenTeacher or None)`` from ``cfg`` (teacher only if a distillation
    weight is > 0). ``input_shape`` [3, H, W] is used for one dry forward pass that finds the
    tapped channel counts (for FitNet's regressors) and checks the spatial sizes early.

    ``with_teacher=False`` (evaluating the student alone) builds the student classifier only: no
    teacher, no taps, no loss heads, and DISTILL.TEACHER.WEIGHTS is not read; such a student can be
    evaluated but gives no distillation loss."""
    terms = distill_terms(cfg)
    student_net = build_role_net(cfg, "student")
    heads = nn.ModuleDict()
    if not terms or not with_teacher:
        return DistillationStudent(student_net, None, [], [], cfg, heads), None

    if not cfg.DISTILL.TEACHER.WEIGHTS:
        raise ValueError(
            f"distillation terms {terms} are on but DISTILL.TEACHER.WEIGHTS is empty: give the file "
            f"of the trained teacher (a random teacher teaches nothing)")
    teacher_net = build_role_net(cfg, "teacher")
    s_layers, t_layers = tap_layers(cfg, "student"), tap_layers(cfg, "teacher")
    check_feature_lists(s_layers, t_layers, cfg.DISTILL.LEVEL_WEIGHTS)
    s_taps = _build_taps(student_net, s_layers, "DISTILL.STUDENT_FEATURES")
    teacher = FrozenTeacher(_build_taps(teacher_net, t_layers, "DISTILL.TEACHER_FEATURES"), t_layers)

    # Dry run on one blank image: channel counts and early check of the spatial sizes.
    was_training = student_net.training
    s_taps.eval()
    with torch.no_grad():
        x = torch.zeros(1, *input_shape)
        _, s_feats = s_taps(x)
        _, t_feats = teacher(x)
    s_taps.train(was_training)
    for layer, feats, key in ((s_layers, s_feats, "DISTILL.STUDENT_FEATURES"),
                              (t_layers, t_feats, "DISTILL.TEACHER_FEATURES")):
        missing = [n for n in layer if n not in feats]
        if missing:
            raise KeyError(f"{key}: layers {missing} gave no feature map (got {sorted(feats)})")
    if any(t in _FEATURE_TERMS for t in terms):
        _check_spatial(s_layers, t_layers, s_feats, t_feats)
    if "fitnet" in terms:
        heads["fitnet"] = nn.ModuleList(
            L.FitNetLoss(s_feats[s].shape[1], t_feats[t].shape[1], 1.0)
            for s, t in zip(s_layers, t_layers))
    student = DistillationStudent(student_net, s_taps, s_layers, t_layers, cfg, heads)
    logger.info(f"distillation: {', '.join(f'{t} x {student.weights[t]:g}' for t in terms)}; "
                f"student taps {s_layers} <- teacher taps {t_layers}")
    return student, teacher
