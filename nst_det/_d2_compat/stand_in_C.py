"""Stand-in for ``detectron2._C``, installed by :mod:`nst_det._d2_compat` only when the compiled
extension is missing (e.g. Detectron2 installed from the ``pb1-detectron2`` sdist).

Faster R-CNN with FPN needs nothing from ``_C``: Detectron2's ``ROIAlign`` and ``batched_nms`` call
torchvision's ops. What does need it -- rotated boxes, deformable convolution and the fast COCO
evaluator -- raises :class:`MissingCompiledOpError` naming the op and how to get the compiled one.
"""

IS_NST_DET_STAND_IN = True

INSTALL_HINT = (
    "Install the official Detectron2 with its compiled extension, e.g. "
    "`pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'` "
    "(see README.md, 'Install')."
)

# op name in detectron2._C -> the Detectron2 feature that needs it
MISSING_OPS = {
    "box_iou_rotated": "rotated boxes (pairwise_iou_rotated, RotatedBoxes)",
    "nms_rotated": "rotated boxes (nms_rotated, batched_nms_rotated)",
    "roi_align_rotated_forward": "rotated boxes (ROIAlignRotated)",
    "roi_align_rotated_backward": "rotated boxes (ROIAlignRotated)",
    "deform_conv_forward": "deformable convolution (DeformConv)",
    "deform_conv_backward_input": "deformable convolution (DeformConv)",
    "deform_conv_backward_filter": "deformable convolution (DeformConv)",
    "modulated_deform_conv_forward": "deformable convolution (ModulatedDeformConv)",
    "modulated_deform_conv_backward": "deformable convolution (ModulatedDeformConv)",
    "InstanceAnnotation": "the fast COCO evaluator (COCOEvaluator(use_fast_impl=True))",
    "COCOevalEvaluateImages": "the fast COCO evaluator (COCOEvaluator(use_fast_impl=True))",
    "COCOevalAccumulate": "the fast COCO evaluator (COCOEvaluator(use_fast_impl=True))",
}


class MissingCompiledOpError(RuntimeError):
    """Raised when code calls an op that only the compiled ``detectron2._C`` provides."""


def missing_op_message(name: str) -> str:
    """The error text for a call of the missing compiled op ``name``."""
    feature = MISSING_OPS.get(name, "this feature")
    return (
        f"detectron2._C.{name} is not available: this Detectron2 has no compiled extension, "
        f"so {feature} cannot run (nst_det's stand-in for detectron2._C is active). {INSTALL_HINT}"
    )


def _missing(name):
    def op(*args, **kwargs):
        raise MissingCompiledOpError(missing_op_message(name))

    op.__name__ = name
    op.__doc__ = f"Unavailable without the compiled extension: {MISSING_OPS[name]}."
    return op


for _name in MISSING_OPS:
    globals()[_name] = _missing(_name)


def get_compiler_version() -> str:
    """Compiler of the extension (read by ``detectron2.utils.collect_env``)."""
    return "none (nst_det stand-in for detectron2._C; not compiled)"


def get_cuda_version() -> str:
    """CUDA compiler of the extension (read by ``detectron2.utils.collect_env``)."""
    return "none (nst_det stand-in for detectron2._C; not compiled)"


def has_cuda() -> bool:
    """Whether the extension was built with CUDA: the stand-in never is."""
    return False


def __getattr__(name: str):
    # Dunder probes (inspect, torch's op registration, pickle) must see a plain AttributeError.
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    raise AttributeError(
        f"module 'detectron2._C' has no attribute '{name}': nst_det's stand-in for the missing "
        f"compiled extension does not provide it. {INSTALL_HINT}"
    )
