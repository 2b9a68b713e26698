"""DistillGeneralizedRCNN: a student GeneralizedRCNN trained with NST (and optionally KD) from a
frozen teacher detector.

In training the student runs as an ordinary ``GeneralizedRCNN``; hooks keep the backbone's input
and features (and, for KD, the sampled proposals and class logits). The teacher then runs without
autograd on the same images, only as far as the matched features (its backbone, and its box head
on the student's proposals when KD is on), and ``loss_nst`` (and ``loss_kd``) join the losses.
In inference only the student runs. The teacher is held outside the module tree, so
``state_dict()``, ``parameters()``, the optimizer and DistributedDataParallel see the student only.
"""
import logging
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage
from torch import nn

from nst_det.detection.load_config import distills
from nst_det.losses import kd_loss, nst_loss
from nst_det.losses.feature_pair import loss_or_nan
from nst_det.losses.nst import check_kernel_args
from nst_det.engine.warmup import current_iteration, warmup_factor

from .teacher import build_teacher

__all__ = ["DistillGeneralizedRCNN"]

logger = logging.getLogger(__name__)

_SWAPPABLE_FORMATS = ("RGB", "BGR")
# DISTILL.RESIZE -> the resize argument of nst_det.losses.nst_loss
RESIZE_CHOICES = {"": None, "student_to_teacher": "to_teacher", "teacher_to_student": "to_student"}


def _available_features(backbone: nn.Module) -> Dict[str, object]:
    """{name: ShapeSpec} of the backbone's outputs and, for FPN-like backbones, of its bottom-up net."""
    shapes = {}
    bottom_up = getattr(backbone, "bottom_up", None)
    if bottom_up is not None and hasattr(bottom_up, "output_shape"):
        shapes.update(bottom_up.output_shape())
    shapes.update(backbone.output_shape())
    return shapes


def _check_features(role: str, key: str, names: Sequence[str], backbone: nn.Module):
    available = _available_features(backbone)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(
            f"{key} names {role} feature(s) {unknown} that the {role} backbone does not give; "
            f"available: {sorted(available)}"
        )
    return available


class _ForwardCapture:
    """Temporarily hook modules and keep what passes through them."""

    def __init__(self):
        self.store = {}
        self._handles = []

    def output(self, name: str, module: nn.Module):
        self._handles.append(module.register_forward_hook(
            lambda m, args, out: self.store.__setitem__(name, out)))

    def input(self, name: str, module: nn.Module, index: int):
        self._handles.append(module.register_forward_pre_hook(
            lambda m, args: self.store.__setitem__(name, args[index])))

    def remove(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []


@META_ARCH_REGISTRY.register()
class DistillGeneralizedRCNN(GeneralizedRCNN):
    """GeneralizedRCNN student + frozen teacher; training adds ``loss_nst`` (and ``loss_kd``)."""

    @configurable
    def __init__(
        self,
        *,
        teacher: Optional[nn.Module],
        student_features: Sequence[str],
        teacher_features: Sequence[str],
        level_weights: Sequence[float],
        nst_weight: float,
        nst_kernel: str = "poly",
        nst_degree: int = 2,
        nst_coef: float = 0.0,
        nst_sigma2: Optional[float] = None,
        kd_weight: float = 0.0,
        kd_temperature: float = 4.0,
        warmup_iters: int = 0,
        resize: str = "",
        **kwargs,
    ):
        """
        Args:
            teacher: a trained, plain detector (e.g. GeneralizedRCNN); frozen and put in eval mode.
                None when nothing is distilled (NST weight 0, KD off): the student trains alone.
            student_features, teacher_features: names matched in order by NST (see
                DISTILL.STUDENT_FEATURES); each pair must have the same stride. Empty: every
                backbone output that student and teacher both have; teacher's empty: the
                student's names.
            level_weights: weight of each matched pair in loss_nst (empty: 1.0 each).
            nst_weight: overall weight of loss_nst (0 = NST off).
            nst_kernel, nst_degree, nst_coef, nst_sigma2: the MMD kernel (nst_det.losses.nst_loss).
            kd_weight, kd_temperature: KD on the ROI box head's class logits (0 = KD off).
            warmup_iters: distillation weights grow linearly over this many iterations (0 = off).
            resize: "" (matched levels must have the same stride), "student_to_teacher" or
                "teacher_to_student" (bilinear resize of one map of each pair to the other's size).
            kwargs: the arguments of GeneralizedRCNN (the student).
        """
        super().__init__(**kwargs)
        self.student_features = list(student_features)
        self.teacher_features = list(teacher_features)
        self.level_weights = [float(w) for w in level_weights]
        self.nst_weight = float(nst_weight)
        self.nst_kwargs = dict(kernel=nst_kernel, degree=nst_degree, coef=nst_coef, sigma2=nst_sigma2)
        self.kd_weight = float(kd_weight)
        self.kd_temperature = float(kd_temperature)
        self.warmup_iters = int(warmup_iters)
        if resize not in RESIZE_CHOICES:
            raise ValueError(f"DISTILL.RESIZE is {resize!r}: it must be one of "
                             f"{sorted(RESIZE_CHOICES)}")
        self.resize = resize

        if teacher is None:
            if self.nst_weight > 0 or self.kd_on:
                raise ValueError("a distillation weight is > 0 but no teacher was given")
            logger.warning("DISTILL.NST.WEIGHT and DISTILL.KD.WEIGHT are 0: nothing is distilled, "
                           "no teacher is built, the student trains alone.")
            self._teacher_holder = []
            return
        teacher.eval()
        teacher.requires_grad_(False)
        # A plain attribute holding a list is not registered as a submodule: the teacher stays out
        # of state_dict(), parameters(), train()/eval() and DistributedDataParallel.
        self._teacher_holder = [teacher]
        self._default_features()
        self._check_distillation()
        teacher.to(self.device)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        d = cfg.DISTILL
        ret.update(
            teacher=build_teacher(cfg) if distills(cfg) else None,
            student_features=d.STUDENT_FEATURES,
            teacher_features=d.TEACHER_FEATURES,
            level_weights=d.LEVEL_WEIGHTS,
            nst_weight=d.NST.WEIGHT,
            nst_kernel=d.NST.KERNEL,
            nst_degree=d.NST.DEGREE,
            nst_coef=d.NST.COEF,
            nst_sigma2=d.NST.SIGMA2 if d.NST.SIGMA2 > 0 else None,
            kd_weight=d.KD.WEIGHT,
            kd_temperature=d.KD.TEMPERATURE,
            warmup_iters=d.WARMUP_ITERS,
            resize=d.RESIZE,
        )
        return ret

    @property
    def kd_on(self) -> bool:
        """KD on the ROI class logits is on (DISTILL.KD.WEIGHT > 0)."""
        return self.kd_weight > 0

    @property
    def teacher(self) -> Optional[nn.Module]:
        """The frozen teacher detector (not a submodule); None when nothing is distilled."""
        return self._teacher_holder[0] if self._teacher_holder else None

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .half() ... move the teacher with the student.
        super()._apply(fn, *args, **kwargs)
        if getattr(self, "_teacher_holder", None):
            self.teacher._apply(fn, *args, **kwargs)
        return self

    # ----------------------------------------------------------------------------------------
    # build-time checks
    # ----------------------------------------------------------------------------------------
    def _default_features(self):
        """Fill what the config leaves empty: the student features (every backbone output the
        teacher also gives, in the student's order), the teacher features (the same names), the
        level weights (1.0 each)."""
        if not self.student_features:
            teacher_outputs = self.teacher.backbone.output_shape()
            self.student_features = [n for n in self.backbone.output_shape() if n in teacher_outputs]
            if not self.student_features:
                raise ValueError(
                    f"DISTILL.STUDENT_FEATURES is [] and the student's backbone outputs "
                    f"{list(self.backbone.output_shape())} share no name with the teacher's "
                    f"{list(teacher_outputs)}: name the matched features")
        if not self.teacher_features:
            self.teacher_features = list(self.student_features)
        if not self.level_weights:
            self.level_weights = [1.0] * len(self.student_features)

    def _check_distillation(self):
        """Raise a ValueError naming the key when the distillation settings cannot work."""
        n = len(self.student_features)
        if len(self.teacher_features) != n:
            raise ValueError(
                f"DISTILL.STUDENT_FEATURES {self.student_features} and "
                f"DISTILL.TEACHER_FEATURES {self.teacher_features} must have the same length"
            )
        if len(self.level_weights) != n:
            raise ValueError(
                f"DISTILL.LEVEL_WEIGHTS {self.level_weights} needs one weight per entry of "
                f"DISTILL.STUDENT_FEATURES {self.student_features}"
            )
        student_shapes = _check_features(
            "student", "DISTILL.STUDENT_FEATURES", self.student_features, self.backbone)
        teacher_shapes = _check_features(
            "teacher", "DISTILL.TEACHER_FEATURES", self.teacher_features, self.teacher.backbone)
        for s_name, t_name in zip(self.student_features, self.teacher_features):
            s_stride, t_stride = student_shapes[s_name].stride, teacher_shapes[t_name].stride
            if s_stride != t_stride and not self.resize:
                raise ValueError(
                    f"student feature '{s_name}' has stride {s_stride} but teacher feature "
                    f"'{t_name}' has stride {t_stride}: NST needs matched levels of the same "
                    "spatial size (DISTILL.STUDENT_FEATURES / TEACHER_FEATURES), or "
                    "DISTILL.RESIZE \"student_to_teacher\" / \"teacher_to_student\""
                )
        s_div, t_div = self.backbone.size_divisibility, self.teacher.backbone.size_divisibility
        if t_div > 1 and s_div % t_div != 0:
            raise ValueError(
                f"the teacher backbone needs inputs divisible by {t_div} but the student pads its "
                f"batch to multiples of {s_div}; the teacher sees the student's padded batch"
            )
        if self.input_format != self.teacher.input_format and not (
            self.input_format in _SWAPPABLE_FORMATS
            and self.teacher.input_format in _SWAPPABLE_FORMATS
        ):
            raise ValueError(
                f"student INPUT.FORMAT '{self.input_format}' and teacher INPUT.FORMAT "
                f"'{self.teacher.input_format}' differ and only RGB<->BGR can be converted"
            )
        try:
            check_kernel_args(resize=None, **self.nst_kwargs)
        except ValueError as e:
            raise ValueError(f"DISTILL.NST: {e}") from e
        if self.kd_on:
            self._check_kd()

    def _check_kd(self):
        for role, model in (("student", self), ("teacher", self.teacher)):
            heads = model.roi_heads
            if not all(isinstance(getattr(heads, a, None), nn.Module)
                       and not isinstance(getattr(heads, a), nn.ModuleList)
                       for a in ("box_pooler", "box_head", "box_predictor")):
                raise ValueError(
                    f"DISTILL.KD.WEIGHT > 0 needs one box head with box_pooler, box_head and "
                    f"box_predictor (e.g. StandardROIHeads); the {role} has "
                    f"{type(heads).__name__}"
                )
        s_classes = self.roi_heads.box_predictor.num_classes
        t_classes = self.teacher.roi_heads.box_predictor.num_classes
        if s_classes != t_classes:
            raise ValueError(
                f"DISTILL.KD.WEIGHT > 0: the student has {s_classes} classes but the teacher "
                f"{t_classes} (MODEL.ROI_HEADS.NUM_CLASSES must agree)"
            )

    # ----------------------------------------------------------------------------------------
    # forward
    # ----------------------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """Training: the student's losses + ``loss_nst`` (+ ``loss_kd``); inference: the student's."""
        if not self.training or self.teacher is None:
            return super().forward(batched_inputs)
        capture = self._student_capture()
        try:
            losses = super().forward(batched_inputs)
        finally:
            capture.remove()
        student = capture.store
        teacher_images = self.teacher_images(batched_inputs, student["images"])
        teacher = self._teacher_forward(teacher_images, student.get("proposal_boxes"))
        losses.update(self.distillation_losses(student, teacher))
        return losses

    def _student_capture(self) -> _ForwardCapture:
        capture = _ForwardCapture()
        capture.input("images", self.backbone, 0)
        capture.output("features", self.backbone)
        if hasattr(self.backbone, "bottom_up"):
            capture.output("bottom_up", self.backbone.bottom_up)
        if self.kd_on:
            capture.input("proposal_boxes", self.roi_heads.box_pooler, 1)
            capture.output("box_predictions", self.roi_heads.box_predictor)
        return capture

    def teacher_images(self, batched_inputs: List[Dict[str, torch.Tensor]],
                       student_images: torch.Tensor) -> torch.Tensor:
        """The teacher's input [N, 3, H, W]: the student's preprocessed batch when both normalise
        alike, else the same raw images normalised with the teacher's PIXEL_MEAN/STD and format,
        padded like the student's batch."""
        teacher = self.teacher
        same_format = teacher.input_format == self.input_format
        if (same_format and torch.equal(teacher.pixel_mean, self.pixel_mean)
                and torch.equal(teacher.pixel_std, self.pixel_std)):
            return student_images
        images = [x["image"].to(self.device) for x in batched_inputs]
        if not same_format:
            images = [x.flip(0) for x in images]  # RGB <-> BGR
        images = [(x - teacher.pixel_mean) / teacher.pixel_std for x in images]
        images = ImageList.from_tensors(images, self.backbone.size_divisibility).tensor
        if images.shape != student_images.shape:
            raise ValueError(
                f"teacher batch {tuple(images.shape)} is not padded like the student batch "
                f"{tuple(student_images.shape)}"
            )
        return images

    def _teacher_forward(self, images: torch.Tensor, proposal_boxes=None) -> Dict[str, object]:
        """Run the teacher without autograd only as far as distillation needs:
        {"features": {name: [N, C_T, H, W]}, "class_logits": [R, K + 1] (KD only)}."""
        backbone = self.teacher.backbone
        names = set(self.teacher_features) if self.nst_weight else set()
        fpn_names = set(backbone.output_shape())
        out, features = {}, {}
        # no_grad, not inference_mode: the student's loss saves these tensors for its backward.
        with torch.no_grad():
            if self.kd_on or names & fpn_names:
                capture = _ForwardCapture()
                if names - fpn_names:  # bottom-up stages matched too
                    capture.output("bottom_up", backbone.bottom_up)
                try:
                    features = dict(backbone(images))
                finally:
                    capture.remove()
                if self.kd_on:
                    out["class_logits"] = self._teacher_class_logits(features, proposal_boxes)
                features.update(capture.store.get("bottom_up", {}))
            elif names:  # only bottom-up stages matched: the teacher's FPN is not run
                features = backbone.bottom_up(images)
        out["features"] = {n: features[n] for n in names}
        return out

    def _teacher_class_logits(self, features: Dict[str, torch.Tensor], proposal_boxes
                              ) -> torch.Tensor:
        """The teacher box head's class logits [R, K + 1] on the student's sampled proposals."""
        heads = self.teacher.roi_heads
        x = heads.box_pooler([features[f] for f in heads.box_in_features], proposal_boxes)
        return heads.box_predictor(heads.box_head(x))[0]

    def distillation_losses(self, student: Dict[str, object], teacher: Dict[str, object]
                            ) -> Dict[str, torch.Tensor]:
        """{"loss_nst": ..., "loss_kd": ...} from captured student and teacher outputs; puts each
        level's MMD^2 in the event storage as ``nst/<student feature>``."""
        factor = warmup_factor(current_iteration(), self.warmup_iters)
        losses = {}
        if self.nst_weight:
            student_features = dict(student.get("bottom_up", {}))
            student_features.update(student["features"])
            terms = self.nst_per_level(student_features, teacher["features"])
            total = sum(w * t for w, t in zip(self.level_weights, terms))
            losses["loss_nst"] = factor * self.nst_weight * total
            self._log_levels(terms, factor)
        if self.kd_on:
            student_logits = student["box_predictions"][0]
            kd = loss_or_nan(
                lambda: kd_loss(student_logits, teacher["class_logits"], self.kd_temperature),
                student_logits)
            losses["loss_kd"] = factor * self.kd_weight * kd
        return losses

    def nst_per_level(self, student_features: Dict[str, torch.Tensor],
                      teacher_features: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        """Unweighted MMD^2 of each matched pair; student [N, C_S, H, W] vs teacher [N, C_T, H, W]."""
        terms = []
        for s_name, t_name in zip(self.student_features, self.teacher_features):
            s, t = student_features[s_name], teacher_features[t_name]
            if s.shape[0] != t.shape[0] or (s.shape[2:] != t.shape[2:] and not self.resize):
                raise ValueError(
                    f"student feature '{s_name}' is {tuple(s.shape)} but teacher feature "
                    f"'{t_name}' is {tuple(t.shape)}: matched levels need the same batch size "
                    "and spatial size"
                )
            terms.append(loss_or_nan(
                lambda: nst_loss(s, t, resize=RESIZE_CHOICES[self.resize], **self.nst_kwargs), s,
                f" (student feature '{s_name}', teacher feature '{t_name}')"))
        return terms

    def _log_levels(self, terms: List[torch.Tensor], factor: float):
        try:
            storage = get_event_storage()
        except AssertionError:
            return
        values = torch.stack([t.detach().float() for t in terms]).cpu().tolist()  # one sync
        for name, value in zip(self.student_features, values):
            storage.put_scalar(f"nst/{name}", value)
        if self.warmup_iters > 0:
            storage.put_scalar("distill/warmup_factor", factor)
