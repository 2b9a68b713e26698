"""Distillation for every Detectron2 detector with a backbone: a student ``GeneralizedRCNN``
(Faster / Mask R-CNN), ``RetinaNet`` or FCOS (:class:`~nst_det.detection.fcos.YamlFCOS`) trained with
NST (and optionally KD) from a frozen teacher of any of those families.

One mechanism, :class:`DistillDetector`, mixed into each student class: in training the student runs
as the plain detector it is; hooks keep the backbone's input and features (and, for KD, the head's
class logits, and for R-CNN the sampled proposals). The teacher then runs without autograd on the
same images, preprocessed by its own ``preprocess_image`` (its normalisation, channel order and
padding: a ViTDet teacher pads to its square, a CNN student to a multiple of 32), only as far as the
matched features (its backbone; its head too when KD is on); matched maps of two differently padded
batches are cropped to the part that covers the images (:func:`crop_to_images`), and ``loss_nst``
(and ``loss_kd``) join the losses. In inference only the student runs. The teacher is
held outside the module tree, so ``state_dict()``, ``parameters()``, the optimizer and
DistributedDataParallel see the student only.
"""
import logging
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, RetinaNet
from detectron2.modeling.meta_arch.dense_detector import DenseDetector, permute_to_N_HWA_K
from detectron2.utils.events import get_event_storage
from torch import nn

from nst_det.detection.load_config import distills
from nst_det.losses import binary_kd_loss, kd_loss, nst_loss
from nst_det.losses.feature_pair import loss_or_nan
from nst_det.engine.distill_config import check_feature_lists, check_nst_kwargs
from nst_det.engine.frozen import fold_frozen_norms, freeze
from nst_det.engine.precision import autocast, float32_outputs, precision_dtype, to_channels_last
from nst_det.engine.warmup import current_iteration, warmup_factor

from .config import distill_arguments
from .fcos import YamlFCOS
from .teacher import build_teacher

__all__ = ["DistillDetector", "DistillGeneralizedRCNN", "DistillRetinaNet", "DistillFCOS",
           "head_family", "pair_features", "same_input_pipeline", "crop_to_images", "image_extent"]

logger = logging.getLogger(__name__)

_SWAPPABLE_FORMATS = ("RGB", "BGR")
# DISTILL.RESIZE -> the resize argument of nst_det.losses.nst_loss
RESIZE_CHOICES = {"": None, "student_to_teacher": "to_teacher", "teacher_to_student": "to_student"}
# DISTILL.MATCH_LEVELS: how empty DISTILL.STUDENT_FEATURES / TEACHER_FEATURES are filled.
MATCH_CHOICES = ("name", "stride")


def head_family(model: nn.Module) -> str:
    """What KD can compare in ``model``'s head: "roi" (one R-CNN box head with box_pooler,
    box_head and box_predictor: softmax class logits per proposal), "dense" (a one-stage
    DenseDetector head: sigmoid class logits per anchor or location), or "" (neither)."""
    heads = getattr(model, "roi_heads", None)
    if heads is not None and all(
            isinstance(getattr(heads, a, None), nn.Module)
            and not isinstance(getattr(heads, a), nn.ModuleList)
            for a in ("box_pooler", "box_head", "box_predictor")):
        return "roi"
    if isinstance(model, DenseDetector):
        return "dense"
    return ""


def _padding(model: nn.Module) -> tuple:
    """How ``model`` pads its batch: (backbone size_divisibility, backbone padding_constraints);
    the latter exists on Detectron2's main only (e.g. {"square_size": 1024} of ViTDet), {} on
    v0.6."""
    backbone = model.backbone
    constraints = dict(getattr(backbone, "padding_constraints", None) or {})
    if constraints.get("square_size", 0) <= 0:  # 0: no square (FPN's default on main)
        constraints.pop("square_size", None)
    return backbone.size_divisibility, constraints


def same_input_pipeline(student: nn.Module, teacher: nn.Module) -> bool:
    """True when ``teacher.preprocess_image`` would make of any batch exactly what
    ``student.preprocess_image`` makes: the same channel order (``input_format``), PIXEL_MEAN,
    PIXEL_STD and padding (size_divisibility and padding_constraints)."""
    return (student.input_format == teacher.input_format
            and student.pixel_mean.shape == teacher.pixel_mean.shape
            and torch.equal(student.pixel_mean, teacher.pixel_mean.to(student.pixel_mean))
            and student.pixel_std.shape == teacher.pixel_std.shape
            and torch.equal(student.pixel_std, teacher.pixel_std.to(student.pixel_std))
            and _padding(student) == _padding(teacher))


def crop_to_images(feature: torch.Tensor, stride: int, image_extent: Sequence[int]) -> torch.Tensor:
    """``feature`` [N, C, H, W] of stride ``stride`` cropped to the rows and columns that cover the
    images of the batch: the first ceil(height / stride) x ceil(width / stride), (height, width) =
    ``image_extent``, the largest image height and width of the batch before padding (never more
    than the map has). Padding is always added at the bottom and right (ImageList.from_tensors), so
    position (i, j) of two maps of one stride looks at the same pixels whatever each batch's
    padding; a crop keeps that correspondence, where a resize would squeeze one model's padding
    into the image."""
    height, width = image_extent
    rows = min(-(-int(height) // stride), feature.shape[-2])
    cols = min(-(-int(width) // stride), feature.shape[-1])
    return feature[..., :rows, :cols]


def _available_features(backbone: nn.Module) -> Dict[str, object]:
    """{name: ShapeSpec} of the backbone's outputs and, for FPN-like backbones, of its bottom-up net."""
    shapes = {}
    bottom_up = getattr(backbone, "bottom_up", None)
    if bottom_up is not None and hasattr(bottom_up, "output_shape"):
        shapes.update(bottom_up.output_shape())
    shapes.update(backbone.output_shape())
    return shapes


def pair_features(student_backbone: nn.Module, teacher_backbone: nn.Module,
                  student_features: Sequence[str], teacher_features: Sequence[str],
                  match_levels: str = "name"):
    """The features NST matches, (student names, teacher names, {student name: ShapeSpec},
    {teacher name: ShapeSpec}), from DISTILL.STUDENT_FEATURES / TEACHER_FEATURES, filled where the
    config leaves them empty: with DISTILL.MATCH_LEVELS "name", every student backbone output the
    teacher also gives, in the student's order, with the same names; with "stride", each student
    backbone output with the teacher's output of the same stride; teacher features of named
    student features: the same names. No pair at all, lists of different lengths or a name a
    backbone does not give are a ValueError naming the key."""
    student_features, teacher_features = list(student_features), list(teacher_features)
    if not student_features:
        student_outputs = student_backbone.output_shape()
        teacher_outputs = teacher_backbone.output_shape()
        if match_levels == "stride":
            by_stride = {shape.stride: name for name, shape in teacher_outputs.items()}
            pairs = [(n, by_stride[s.stride]) for n, s in student_outputs.items()
                     if s.stride in by_stride]
        else:
            pairs = [(n, n) for n in student_outputs if n in teacher_outputs]
        if not pairs:
            strides = {n: s.stride for n, s in student_outputs.items()}
            t_strides = {n: s.stride for n, s in teacher_outputs.items()}
            raise ValueError(
                f"DISTILL.STUDENT_FEATURES is [] and no student backbone output "
                f"{strides} has a teacher output {t_strides} of the same "
                f"{match_levels} (DISTILL.MATCH_LEVELS): name the matched features")
        student_features = [s for s, _ in pairs]
        if not teacher_features:
            teacher_features = [t for _, t in pairs]
    if not teacher_features:
        teacher_features = list(student_features)
    check_feature_lists(student_features, teacher_features, [])
    student_shapes = _check_features(
        "student", "DISTILL.STUDENT_FEATURES", student_features, student_backbone)
    teacher_shapes = _check_features(
        "teacher", "DISTILL.TEACHER_FEATURES", teacher_features, teacher_backbone)
    return student_features, teacher_features, student_shapes, teacher_shapes


def _check_features(role: str, key: str, names: Sequence[str], backbone: nn.Module):
    """{name: ShapeSpec} of what ``backbone`` gives; a ValueError naming ``key`` when one of
    ``names`` is not among them."""
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


class DistillDetector:
    """Mixed in before a Detectron2 detector class (``class DistillX(DistillDetector, X)``): that
    detector is the student, a frozen teacher detector of any family teaches it; training adds
    ``loss_nst`` (and ``loss_kd``)."""

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
        match_levels: str = "name",
        teacher_precision: str = "",
        teacher_channels_last: bool = True,
        teacher_fold_norms: bool = True,
        **kwargs,
    ):
        """
        Args:
            teacher: a trained, plain detector (GeneralizedRCNN, RetinaNet, FCOS); frozen and put
                in eval mode. None when nothing is distilled (NST weight 0, KD off): the student
                trains alone.
            student_features, teacher_features: names matched in order by NST (see
                DISTILL.STUDENT_FEATURES); each pair must have the same stride unless ``resize``.
                Empty: filled by ``match_levels``; teacher's empty: the student's names.
            level_weights: weight of each matched pair in loss_nst (empty: 1.0 each).
            nst_weight: overall weight of loss_nst (0 = NST off).
            nst_kernel, nst_degree, nst_coef, nst_sigma2: the MMD kernel (nst_det.losses.nst_loss).
            kd_weight, kd_temperature: KD on the heads' class logits (0 = KD off): softmax KD on
                the ROI box head of R-CNN pairs, binary (sigmoid) KD on the dense head of
                one-stage pairs that predict the same anchors or locations.
            warmup_iters: distillation weights grow linearly over this many iterations (0 = off).
            resize: "" (matched levels must have the same stride), "student_to_teacher" or
                "teacher_to_student" (bilinear resize of one map of each pair to the other's size).
            match_levels: "name" (empty feature lists: every backbone output both have, by name)
                or "stride" (each student backbone output with the teacher's of the same stride).
            teacher_precision: "" (as the student's step: float32, or inside the student's
                mixed-precision autocast), "fp32", "bf16" or "fp16": the teacher's forward under
                autocast in that type (refused where the device lacks it); its outputs are cast
                to float32 in every case.
            teacher_channels_last: the teacher's convolution weights stored channels-last.
            teacher_fold_norms: the teacher's frozen norms folded into its convolutions
                (:func:`~nst_det.engine.frozen.fold_frozen_norms`).
            kwargs: the arguments of the student's detector class.
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
        if match_levels not in MATCH_CHOICES:
            raise ValueError(f"DISTILL.MATCH_LEVELS is {match_levels!r}: it must be one of "
                             f"{list(MATCH_CHOICES)}")
        self.resize = resize
        self.match_levels = match_levels

        if teacher is None:
            if self.nst_weight > 0 or self.kd_on:
                raise ValueError("a distillation weight is > 0 but no teacher was given")
            logger.warning("DISTILL.NST.WEIGHT and DISTILL.KD.WEIGHT are 0: nothing is distilled, "
                           "no teacher is built, the student trains alone.")
            self._teacher_holder = []
            return
        freeze(teacher)
        if teacher_fold_norms:
            # Detectron2's Conv2d holds its norm; a detector is not traceable by torch.fx
            fold_frozen_norms(teacher, trace=False)
        self.teacher_precision = teacher_precision
        self._teacher_dtypes = {}  # {(device, precision): autocast dtype}
        if teacher_channels_last:
            to_channels_last(teacher)
        # A plain attribute holding a list is not registered as a submodule: the teacher stays out
        # of state_dict(), parameters(), train()/eval() and DistributedDataParallel.
        self._teacher_holder = [teacher]
        self._check_distillation(*self._default_features())
        teacher.to(self.device)
        logger.info(f"Distilling a {type(teacher).__name__} teacher into a "
                    f"{type(self).__name__} student; NST on student {self.student_features} / "
                    f"teacher {self.teacher_features}" + (f", KD on the {head_family(self)} "
                                                          f"heads" if self.kd_on else ""))

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret.update(teacher=build_teacher(cfg) if distills(cfg) else None,
                   **distill_arguments(cfg.DISTILL))
        return ret

    @property
    def kd_on(self) -> bool:
        """KD on the heads' class logits is on (DISTILL.KD.WEIGHT > 0)."""
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
        """Fill what the config leaves empty: the matched features (:func:`pair_features`, which
        checks them) and the level weights (1.0 each); returns the matched features' shapes
        ({student name: ShapeSpec}, {teacher name: ShapeSpec})."""
        self.student_features, self.teacher_features, student_shapes, teacher_shapes = \
            pair_features(self.backbone, self.teacher.backbone, self.student_features,
                          self.teacher_features, self.match_levels)
        # {name: stride} of the matched features: where crop_to_images cuts each map
        self._matched_strides = (
            {n: student_shapes[n].stride for n in self.student_features},
            {n: teacher_shapes[n].stride for n in self.teacher_features})
        if not self.level_weights:
            self.level_weights = [1.0] * len(self.student_features)
        return student_shapes, teacher_shapes

    def _check_distillation(self, student_shapes, teacher_shapes):
        """Raise a ValueError naming the key when the distillation settings cannot work;
        ``student_shapes`` / ``teacher_shapes``: {name: ShapeSpec} of the matched features."""
        check_feature_lists(self.student_features, self.teacher_features, self.level_weights)
        for s_name, t_name in zip(self.student_features, self.teacher_features):
            s_stride, t_stride = student_shapes[s_name].stride, teacher_shapes[t_name].stride
            if s_stride != t_stride and not self.resize:
                raise ValueError(
                    f"student feature '{s_name}' has stride {s_stride} but teacher feature "
                    f"'{t_name}' has stride {t_stride}: NST needs matched levels of the same "
                    "spatial size (DISTILL.STUDENT_FEATURES / TEACHER_FEATURES), or "
                    "DISTILL.RESIZE \"student_to_teacher\" / \"teacher_to_student\""
                )
        if not callable(getattr(self.teacher, "preprocess_image", None)):
            raise ValueError(
                f"the {type(self.teacher).__name__} teacher has no preprocess_image: nst_det "
                "prepares the teacher's input with the teacher's own preprocess_image")
        if self.input_format != self.teacher.input_format and not (
            self.input_format in _SWAPPABLE_FORMATS
            and self.teacher.input_format in _SWAPPABLE_FORMATS
        ):
            raise ValueError(
                f"student INPUT.FORMAT '{self.input_format}' and teacher INPUT.FORMAT "
                f"'{self.teacher.input_format}' differ and only RGB<->BGR can be converted"
            )
        check_nst_kwargs(self.nst_kwargs)
        if self.kd_on:
            self._check_kd()

    def _check_kd(self):
        """KD needs heads that predict comparable class logits: both R-CNN box heads, or both dense
        heads on the same anchors (or locations) of the same strides; and the same classes."""
        families = head_family(self), head_family(self.teacher)
        names = type(self).__name__, type(self.teacher).__name__
        if families[0] != families[1] or not families[0]:
            raise ValueError(
                f"DISTILL.KD.WEIGHT > 0 but the heads of the {names[0]} student and the {names[1]} "
                f"teacher cannot be compared: KD needs two R-CNN box heads (box_pooler, box_head, "
                f"box_predictor, e.g. StandardROIHeads) or two one-stage heads that predict the "
                f"same anchors; set DISTILL.KD.WEIGHT 0 (NST needs no such match)")
        if families[0] == "roi":
            s_classes = self.roi_heads.box_predictor.num_classes
            t_classes = self.teacher.roi_heads.box_predictor.num_classes
            key = "MODEL.ROI_HEADS.NUM_CLASSES"
        else:
            s_classes, t_classes = self.num_classes, self.teacher.num_classes
            key = "NUM_CLASSES of MODEL.RETINANET / MODEL.FCOS"
            s_anchors, t_anchors = _dense_anchors(self), _dense_anchors(self.teacher)
            if _padding(self) != _padding(self.teacher):
                raise ValueError(
                    f"DISTILL.KD.WEIGHT > 0: the {names[0]} student and the {names[1]} teacher "
                    f"pad their batches differently (size_divisibility, padding_constraints: "
                    f"student {_padding(self)}, teacher {_padding(self.teacher)}), so their dense "
                    f"heads predict at different locations and their class logits cannot be "
                    f"compared one to one")
            if s_anchors != t_anchors:
                raise ValueError(
                    f"DISTILL.KD.WEIGHT > 0: the {names[0]} student and the {names[1]} teacher "
                    f"predict different anchors or locations, so their class logits cannot be "
                    f"compared one to one (student: {_anchor_counts(s_anchors)}; teacher: "
                    f"{_anchor_counts(t_anchors)}, as [(stride, anchors per location)] per head "
                    f"level, and the anchor shapes)")
        if s_classes != t_classes:
            raise ValueError(
                f"DISTILL.KD.WEIGHT > 0: the student has {s_classes} classes but the teacher "
                f"{t_classes} ({key} must agree)"
            )

    # ----------------------------------------------------------------------------------------
    # forward
    # ----------------------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """Training: the student's losses + ``loss_nst`` (+ ``loss_kd``); inference: the student's."""
        if not self.training or self.teacher is None:
            return super().forward(batched_inputs)
        extent = image_extent(batched_inputs)
        self._check_teacher_sees_the_images(extent)
        capture = self._student_capture()
        try:
            losses = super().forward(batched_inputs)
        finally:
            capture.remove()
        student = capture.store
        teacher_images = self.teacher_images(batched_inputs, student["images"])
        teacher = self._teacher_forward(teacher_images, student.get("proposal_boxes"))
        if teacher_images.shape[-2:] != student["images"].shape[-2:]:
            # two pipelines padded the batch differently: compare the maps where the images are
            student, teacher = self.crop_matched_features(student, teacher, extent)
        losses.update(self.distillation_losses(student, teacher))
        return losses

    def _check_teacher_sees_the_images(self, extent: Sequence[int]):
        """A teacher that pads to a square (ViTDet: padding_constraints {"square_size": 1024})
        cannot take a larger image: a ValueError naming both sizes and the student's keys."""
        square = _padding(self.teacher)[1].get("square_size", 0)
        if square > 0 and max(extent) > square:
            raise ValueError(
                f"the batch has images of up to {extent[0]} x {extent[1]} pixels but the teacher's "
                f"backbone pads its input to a {square} x {square} square (its padding_constraints"
                f"): it cannot see the whole image. Keep the student's training images within "
                f"{square} pixels (INPUT.MAX_SIZE_TRAIN, or the crop of its augmentation)")

    def crop_matched_features(self, student: Dict[str, object], teacher: Dict[str, object],
                              extent: Sequence[int]):
        """``student`` and ``teacher`` (the captured outputs) with every matched feature map cut
        to the rows and columns that cover the images, ``extent`` = (largest height, largest
        width) of the batch before padding (:func:`crop_to_images`); other entries unchanged."""
        s_strides, t_strides = self._matched_strides
        student = dict(student)
        for key in ("features", "bottom_up"):
            if key in student:
                student[key] = {n: crop_to_images(v, s_strides[n], extent) if n in s_strides else v
                                for n, v in student[key].items()}
        teacher = dict(teacher)
        teacher["features"] = {n: crop_to_images(v, t_strides[n], extent)
                               for n, v in teacher["features"].items()}
        return student, teacher

    def _student_capture(self) -> _ForwardCapture:
        capture = _ForwardCapture()
        capture.input("images", self.backbone, 0)
        capture.output("features", self.backbone)
        if hasattr(self.backbone, "bottom_up"):
            capture.output("bottom_up", self.backbone.bottom_up)
        if self.kd_on and head_family(self) == "roi":
            capture.input("proposal_boxes", self.roi_heads.box_pooler, 1)
            capture.output("box_predictions", self.roi_heads.box_predictor)
        elif self.kd_on:
            capture.output("head_predictions", self.head)
        return capture

    def teacher_images(self, batched_inputs: List[Dict[str, torch.Tensor]],
                       student_images: torch.Tensor) -> torch.Tensor:
        """The teacher's input [N, 3, H', W']: the same images at the same scale, prepared by the
        teacher's own ``preprocess_image`` (its PIXEL_MEAN/STD, its padding: size_divisibility
        and, on Detectron2's main, padding_constraints such as ViTDet's square), given in its
        channel order (RGB <-> BGR swapped where the two differ). ``student_images`` itself when
        both pipelines are the same (:func:`same_input_pipeline`)."""
        teacher = self.teacher
        if same_input_pipeline(self, teacher):
            return student_images
        swap = teacher.input_format != self.input_format
        inputs = [{"image": x["image"].flip(-3) if swap else x["image"]} for x in batched_inputs]
        return teacher.preprocess_image(inputs).tensor

    def _teacher_forward(self, images: torch.Tensor, proposal_boxes=None,
                         precision: Optional[str] = None) -> Dict[str, object]:
        """Run the teacher without autograd only as far as distillation needs, in its precision
        (``precision``, default DISTILL.TEACHER.PRECISION; "fp32" is float32 even inside the
        student's mixed-precision step), and give its outputs in float32: {"features": {name:
        [N, C_T, H, W]}, "class_logits": [R, K + 1] (KD only)}."""
        with autocast(self.teacher_dtype(images.device, precision), images.device):
            out = self._teacher_outputs(images, proposal_boxes)
        return float32_outputs(out)

    def teacher_dtype(self, device=None, precision: Optional[str] = None) -> Optional[torch.dtype]:
        """The teacher's autocast dtype on ``device`` (default: the model's) for ``precision``
        (default: DISTILL.TEACHER.PRECISION), None for float32, ``AS_STUDENT`` for ""; a
        ValueError naming
        DISTILL.TEACHER.PRECISION where the device lacks that type (the trainers ask once the
        model is on its device, before training)."""
        device = torch.device(device if device is not None else self.device)
        precision = precision or self.teacher_precision
        if (device, precision) not in self._teacher_dtypes:
            self._teacher_dtypes[device, precision] = precision_dtype(
                precision, device, "DISTILL.TEACHER.PRECISION")
        return self._teacher_dtypes[device, precision]

    def _teacher_outputs(self, images: torch.Tensor, proposal_boxes=None) -> Dict[str, object]:
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
        """The teacher head's class logits: R-CNN, [R, K + 1] of its box head on the student's
        sampled proposals; dense, [N * anchors, K] of its head on its own features."""
        if head_family(self.teacher) == "dense":
            teacher = self.teacher
            predictions = teacher.head([features[f] for f in teacher.head_in_features])
            return _dense_class_logits(predictions, teacher.num_classes)
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
            if "head_predictions" in student:  # one-stage: sigmoid logits per anchor
                student_logits = _dense_class_logits(student["head_predictions"], self.num_classes)
                loss_fn = binary_kd_loss
            else:  # R-CNN: softmax logits per sampled proposal
                student_logits = student["box_predictions"][0]
                loss_fn = kd_loss
            kd = loss_or_nan(
                lambda: loss_fn(student_logits, teacher["class_logits"], self.kd_temperature),
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


def image_extent(batched_inputs: List[Dict[str, torch.Tensor]]) -> tuple:
    """(largest height, largest width) of the images of a batch, before any padding."""
    sizes = [x["image"].shape[-2:] for x in batched_inputs]
    return max(int(h) for h, _ in sizes), max(int(w) for _, w in sizes)


def _dense_anchors(model: DenseDetector) -> List[tuple]:
    """[(stride, cell anchors as a tuple)] of each level of a dense head: two heads that agree here
    predict at the same anchors (or, for FCOS, locations) in the same order."""
    strides = [model.backbone.output_shape()[f].stride for f in model.head_in_features]
    cells = [tuple(round(v, 4) for v in c.flatten().tolist())
             for c in model.anchor_generator.cell_anchors]
    if len(cells) == 1:
        cells = cells * len(strides)
    return list(zip(strides, cells))


def _anchor_counts(anchors: List[tuple]) -> List[tuple]:
    return [(stride, len(cell) // 4) for stride, cell in anchors]


def _dense_class_logits(predictions, num_classes: int) -> torch.Tensor:
    """The class logits of a dense head's predictions (its first output: one [N, A * K, H, W] per
    level) as one [N * sum(H * W * A), K] tensor, anchors in the order the head predicts them."""
    logits = [permute_to_N_HWA_K(x, num_classes) for x in predictions[0]]
    return torch.cat(logits, dim=1).reshape(-1, num_classes)


@META_ARCH_REGISTRY.register()
class DistillGeneralizedRCNN(DistillDetector, GeneralizedRCNN):
    """GeneralizedRCNN student (Faster / Mask R-CNN) + frozen teacher; training adds ``loss_nst``
    (and ``loss_kd``)."""


@META_ARCH_REGISTRY.register()
class DistillRetinaNet(DistillDetector, RetinaNet):
    """RetinaNet student + frozen teacher; training adds ``loss_nst`` (and ``loss_kd``)."""


@META_ARCH_REGISTRY.register()
class DistillFCOS(DistillDetector, YamlFCOS):
    """FCOS student (MODEL.FCOS) + frozen teacher; training adds ``loss_nst`` (and ``loss_kd``)."""
