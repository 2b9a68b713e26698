"""The distillation keys both stages share (``DISTILL``), their checks, and the keys they replace.

Detection (:func:`nst_det.detection.config.add_nst_config`) and classification
(:func:`nst_det.classification.config.get_cls_config`) both call :func:`add_distill_config`, so a
key means the same thing, with the same default, in both; each stage then adds only what it alone
has (the detection teacher's ``DISTILL.TEACHER.CONFIG``; the classification teacher's
``DISTILL.TEACHER.NAME``, AT and FitNet). A term is on when its weight is > 0. The table of every
key is in docs/DISTILLATION.md.

Keys of earlier versions (``MODEL.DISTILL.WEIGHT``, ``MODEL.TEACHER.TAP``, ...) are refused with a
``KeyError`` that names the file (or the command line) that sets them and the key that replaces
them (:func:`check_renamed_keys`, :data:`RENAMED_KEYS`).
"""
import math
from typing import Optional, Sequence

from nst_det.engine.config_paths import yaml_chain
from nst_det.engine.precision import PRECISIONS
from nst_det.losses.nst import check_kernel_args

__all__ = ["add_distill_config", "check_distill_config", "check_feature_lists", "check_nst_kwargs",
           "nst_loss_kwargs", "check_renamed_keys", "RENAMED_KEYS", "distill_weight_keys"]

# Old key -> the key that replaces it, or a sentence saying why it has none.
RENAMED_KEYS = {
    # detection, before both stages shared DISTILL
    "MODEL.DISTILL.TEACHER_CONFIG": "DISTILL.TEACHER.CONFIG",
    "MODEL.DISTILL.TEACHER_WEIGHTS": "DISTILL.TEACHER.WEIGHTS",
    "MODEL.DISTILL.STUDENT_FEATURES": "DISTILL.STUDENT_FEATURES",
    "MODEL.DISTILL.TEACHER_FEATURES": "DISTILL.TEACHER_FEATURES",
    "MODEL.DISTILL.LEVEL_WEIGHTS": "DISTILL.LEVEL_WEIGHTS",
    "MODEL.DISTILL.WEIGHT": "DISTILL.NST.WEIGHT",
    "MODEL.DISTILL.WARMUP_ITERS": "DISTILL.WARMUP_ITERS",
    "MODEL.DISTILL.LOSS.KERNEL": "DISTILL.NST.KERNEL",
    "MODEL.DISTILL.LOSS.DEGREE": "DISTILL.NST.DEGREE",
    "MODEL.DISTILL.LOSS.COEF": "DISTILL.NST.COEF",
    "MODEL.DISTILL.LOSS.SIGMA2": "DISTILL.NST.SIGMA2",
    "MODEL.DISTILL.KD.WEIGHT": "DISTILL.KD.WEIGHT",
    "MODEL.DISTILL.KD.TEMPERATURE": "DISTILL.KD.TEMPERATURE",
    # classification, before both stages shared DISTILL
    "MODEL.TEACHER.NAME": "DISTILL.TEACHER.NAME",
    "MODEL.TEACHER.WEIGHTS": "DISTILL.TEACHER.WEIGHTS",
    "MODEL.TEACHER.TAP": "DISTILL.TEACHER_FEATURES",
    "MODEL.STUDENT.TAP": "DISTILL.STUDENT_FEATURES",
}
# Old keys with no one-to-one replacement -> what to do instead.
REMOVED_KEYS = {
    "MODEL.DISTILL.KD.ENABLED": "KD is on when DISTILL.KD.WEIGHT is > 0 (set DISTILL.KD.WEIGHT 1.0 "
                                "where KD.ENABLED was True, and leave it 0.0 where it was False)",
}
# Old groups: any other key under them is refused, pointing at DISTILL.
_OLD_GROUPS = ("MODEL.DISTILL", "MODEL.TEACHER")


def add_distill_config(cfg):
    """Add the ``DISTILL`` keys both stages share to ``cfg`` (a Detectron2 or fvcore CfgNode)."""
    CN = type(cfg)
    _C = cfg
    _C.DISTILL = CN()
    # Linear warm-up of every distillation weight: scaled by min(1, (iter + 1) / WARMUP_ITERS).
    # 0 = off.
    _C.DISTILL.WARMUP_ITERS = 0
    # Student features matched by the feature terms (NST, AT, FitNet), in order with TEACHER_FEATURES.
    # Detection: backbone outputs ("p2".."p6", "res2".."res5"); [] = every output that the student
    # and the teacher both have. Classification: layer names; [] = the last map before pooling.
    _C.DISTILL.STUDENT_FEATURES = []
    # Teacher features matched in order with STUDENT_FEATURES. [] = detection: the names of
    # STUDENT_FEATURES; classification: the teacher's last map before pooling.
    _C.DISTILL.TEACHER_FEATURES = []
    # Weight of each matched pair in the feature terms, one per pair; [] = 1.0 for each.
    _C.DISTILL.LEVEL_WEIGHTS = []

    _C.DISTILL.TEACHER = CN()
    # The trained teacher's weights, a local file loaded strictly (a missing, unexpected or wrongly
    # shaped key is an error). Required when a distillation weight is > 0; nothing is downloaded.
    _C.DISTILL.TEACHER.WEIGHTS = ""
    # --resume with teacher weights other than the checkpoint's (SHA-256): True warns, False refuses.
    _C.DISTILL.TEACHER.ALLOW_OTHER_ON_RESUME = False
    # Precision of the teacher's forward: "" = as the student's step (float32, or the student's AMP
    # type under SOLVER.AMP), "fp32", "bf16" (autocast; CUDA >= sm80, CPU with AVX-512) or "fp16"
    # (CUDA only); its outputs are cast to float32 for NST and KD. "bf16" measured: 1.7x faster
    # teacher on an AVX512-BF16 CPU (2.3x channels-last, norms folded), loss_nst within 2 %
    # (docs/RESULTS.md).
    _C.DISTILL.TEACHER.PRECISION = ""
    # The teacher's convolution weights stored channels-last (NHWC). Measured on the CPU (R-101 FPN,
    # 800 x 1067, docs/BENCHMARKS.md): 1.22x faster in float32, 1.28x in bfloat16; False = NCHW.
    _C.DISTILL.TEACHER.CHANNELS_LAST = True
    # The frozen teacher's batch norms folded into the convolutions before them: exact up to
    # rounding, measured 1.06x faster (bfloat16 channels-last R-101 FPN, docs/BENCHMARKS.md).
    _C.DISTILL.TEACHER.FOLD_NORMS = True

    _C.DISTILL.NST = CN()
    # Weight of loss_nst = WEIGHT * sum_pairs LEVEL_WEIGHTS[l] * MMD^2_l; 0 turns NST off.
    _C.DISTILL.NST.WEIGHT = 0.0
    # MMD kernel: "poly" (the paper's main choice), "linear" or "gaussian".
    _C.DISTILL.NST.KERNEL = "poly"
    # Degree d of the polynomial kernel (x^T y + c)^d (paper: 2).
    _C.DISTILL.NST.DEGREE = 2
    # Constant c of the polynomial kernel (paper: 0).
    _C.DISTILL.NST.COEF = 0.0
    # Bandwidth sigma^2 of the Gaussian kernel (> 0); 0 = the data-driven rule of nst_det.losses.
    _C.DISTILL.NST.SIGMA2 = 0.0

    _C.DISTILL.KD = CN()
    # Weight of loss_kd (T^2 * KL of the softened class outputs); 0 turns KD off. The official
    # code's grad_scale 16 at T=4 is T^2, which kd_loss already includes: weight 1 here.
    _C.DISTILL.KD.WEIGHT = 0.0
    # Softmax temperature T of KD (official code: 4).
    _C.DISTILL.KD.TEMPERATURE = 4.0
    return _C


def distill_weight_keys(cfg) -> list:
    """``["DISTILL.NST.WEIGHT", "DISTILL.KD.WEIGHT", ...]``: every term's weight key in ``cfg``."""
    return [f"DISTILL.{name}.WEIGHT" for name, node in cfg.DISTILL.items()
            if hasattr(node, "keys") and "WEIGHT" in node]


def _check_number(key: str, value, valid, rule: str) -> None:
    """ValueError ``"<key> is <value>: <rule>"`` unless ``value`` is a finite number for which
    ``valid(value)`` holds."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not valid(value)):
        raise ValueError(f"{key} is {value!r}: {rule}")


def nst_loss_kwargs(nst) -> dict:
    """The kernel arguments of :func:`nst_det.losses.nst_loss` that a ``DISTILL.NST`` node sets:
    ``{"kernel", "degree", "coef", "sigma2"}``, with SIGMA2 0 as None (the data-driven bandwidth)."""
    return dict(kernel=nst.KERNEL, degree=nst.DEGREE, coef=nst.COEF,
                sigma2=nst.SIGMA2 if nst.SIGMA2 > 0 else None)


def check_nst_kwargs(kwargs: dict) -> None:
    """ValueError "DISTILL.NST: ..." for kernel arguments (as :func:`nst_loss_kwargs` gives them)
    that :func:`nst_det.losses.nst_loss` refuses."""
    try:
        check_kernel_args(resize=None, **kwargs)
    except ValueError as e:
        raise ValueError(f"DISTILL.NST: {e}") from e


def check_feature_lists(student_features: Sequence[str], teacher_features: Sequence[str],
                        level_weights: Sequence[float]) -> None:
    """ValueError naming the keys when DISTILL.TEACHER_FEATURES or DISTILL.LEVEL_WEIGHTS, where
    given, has another length than DISTILL.STUDENT_FEATURES (the pairs are matched in order).
    Checked on the config as loaded (empty lists are filled later, by each stage from its
    networks) and again on the filled lists."""
    student, teacher, weights = list(student_features), list(teacher_features), list(level_weights)
    if teacher and len(teacher) != len(student):
        raise ValueError(f"DISTILL.STUDENT_FEATURES {student} and DISTILL.TEACHER_FEATURES "
                         f"{teacher} must name the same number of features (matched in order)")
    if student and weights and len(weights) != len(student):
        raise ValueError(f"DISTILL.LEVEL_WEIGHTS {weights} needs one weight per "
                         f"entry of DISTILL.STUDENT_FEATURES {student} ([] = 1.0 each)")


def check_distill_config(cfg) -> None:
    """ValueError naming the key and its value for a ``DISTILL`` setting that cannot be right: a
    negative or non-finite term weight or level weight, a DISTILL.LEVEL_WEIGHTS or
    DISTILL.TEACHER_FEATURES whose length differs from DISTILL.STUDENT_FEATURES, an unknown
    DISTILL.NST.KERNEL or a bad DEGREE, a negative DISTILL.NST.SIGMA2, a DISTILL.KD.TEMPERATURE
    that is not > 0, a negative DISTILL.WARMUP_ITERS or an unknown DISTILL.TEACHER.PRECISION."""
    d = cfg.DISTILL
    weight_rule = "a distillation weight must be a finite number >= 0 (0 turns the term off)"
    for key in distill_weight_keys(cfg):
        _check_number(key, d[key.split(".")[1]].WEIGHT, lambda w: w >= 0, weight_rule)
    for i, w in enumerate(d.LEVEL_WEIGHTS):
        _check_number(f"DISTILL.LEVEL_WEIGHTS[{i}]", w, lambda w: w >= 0, weight_rule)
    check_feature_lists(d.STUDENT_FEATURES, d.TEACHER_FEATURES, d.LEVEL_WEIGHTS)
    _check_number("DISTILL.NST.SIGMA2", d.NST.SIGMA2, lambda s: s >= 0,
                  "the Gaussian bandwidth must be a finite number > 0, or 0 for the data-driven "
                  "rule")
    check_nst_kwargs(nst_loss_kwargs(d.NST))
    _check_number("DISTILL.KD.TEMPERATURE", d.KD.TEMPERATURE, lambda t: t > 0,
                  "the KD temperature must be a finite number > 0")
    _check_number("DISTILL.WARMUP_ITERS", d.WARMUP_ITERS, lambda n: n >= 0,
                  "it must be >= 0 (0 = no warm-up)")
    if d.TEACHER.PRECISION not in PRECISIONS:  # the device's support: checked where it is known
        raise ValueError(f"DISTILL.TEACHER.PRECISION is {d.TEACHER.PRECISION!r}: it must be one "
                         f"of {list(PRECISIONS)}")


def _flat_keys(mapping, prefix=""):
    """Dotted keys of the leaves (and empty groups) of a yaml mapping."""
    for name, value in (mapping or {}).items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            yield from _flat_keys(value, key + ".")
        else:
            yield key


def _renamed_message(key: str, where: str) -> Optional[str]:
    if key in RENAMED_KEYS:
        return f"{key} ({where}) was renamed {RENAMED_KEYS[key]}: write {RENAMED_KEYS[key]}"
    if key in REMOVED_KEYS:
        return f"{key} ({where}) was removed: {REMOVED_KEYS[key]}"
    for group in _OLD_GROUPS:
        if key == group or key.startswith(group + "."):
            return (f"{key} ({where}) is no key any more: the distillation keys are under DISTILL "
                    f"(table in docs/DISTILLATION.md)")
    return None


def check_renamed_keys(config_file: str = "", opts: Optional[Sequence[str]] = None) -> None:
    """KeyError naming a key of an earlier version, where it is set (the yaml of ``config_file``'s
    ``_BASE_`` chain, or the command line ``opts``) and the key that replaces it. Called before the
    merge, which would only say "Non-existent config key"."""
    sources = [(f"set in {path}", list(_flat_keys(raw))) for path, raw in
               (yaml_chain(config_file) if config_file else [])]
    sources.append(("given on the command line", [str(k) for k in list(opts or [])[0::2]]))
    for where, keys in sources:
        for key in keys:
            message = _renamed_message(key, where)
            if message:
                raise KeyError(message)
