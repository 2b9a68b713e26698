"""Deploying a distilled student: the plain student of a (distillation) config built and loaded
strictly from a checkpoint, then traced with Detectron2's ``TracingAdapter`` into TorchScript or
ONNX (the "tracing" method of Detectron2's ``tools/deploy/export_model.py``).

The traced model takes one image tensor, ``[3, H, W]`` float32 in the config's INPUT.FORMAT,
already resized as the test loader resizes it (ResizeShortestEdge to INPUT.MIN_SIZE_TEST /
MAX_SIZE_TEST), and returns the flattened ``Instances`` of that image: a tuple of tensors
(``pred_boxes`` in the coordinates of the given tensor, ``pred_classes``, ``scores`` and the
image size; :func:`tracing_adapter`'s ``outputs_schema`` turns it back into ``Instances``).

Needs ``detectron2.export``: Detectron2 v0.6's export package imports caffe2 at import time,
which torch no longer ships (:func:`require_detectron2_export` says so); Detectron2's main
imports it without caffe2."""
import logging
import os
from typing import Dict, List, Optional

import torch
from detectron2.modeling import GeneralizedRCNN, build_model

from nst_det.engine.checkpointer import load_weights_strictly

from .load_config import student_cfg

__all__ = ["ExportUnavailableError", "require_detectron2_export", "build_plain_student",
           "sample_inputs", "tracing_adapter", "export_torchscript", "export_onnx",
           "flattened_outputs", "EXPORT_FORMATS", "ONNX_OPSET"]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = {"torchscript": "model.ts", "onnx": "model.onnx"}
# ONNX opset of --format onnx: ONNX's RoiAlign has the half-pixel mode of Detectron2's ROIAlign
# (aligned=True) from opset 16 on; at Detectron2's STABLE_ONNX_OPSET_VERSION (11) an R-CNN's boxes
# and scores come out of ONNX Runtime differently from PyTorch's.
ONNX_OPSET = 16


class ExportUnavailableError(RuntimeError):
    """The installed Detectron2 (or the ONNX exporter) cannot export."""


def require_detectron2_export():
    """The module ``detectron2.export``; an :class:`ExportUnavailableError` saying that export
    needs Detectron2's main when it cannot be imported (Detectron2 v0.6: it imports caffe2)."""
    try:
        import detectron2.export as d2_export
    except ImportError as e:  # v0.6: ModuleNotFoundError "No module named 'caffe2'"
        raise ExportUnavailableError(
            f"exporting needs Detectron2's main branch (built from GitHub): this Detectron2's "
            f"detectron2.export cannot be imported ({type(e).__name__}: {e}). Detectron2 v0.6's "
            f"export package imports caffe2, which torch no longer ships; Detectron2's main "
            f"exports with TracingAdapter without caffe2. Install it as README.md (Install) "
            f"says, then run the export again.") from e
    return d2_export


def build_plain_student(cfg, weights: str):
    """The plain student of ``cfg`` (:func:`~nst_det.detection.load_config.student_cfg`: e.g.
    GeneralizedRCNN for DistillGeneralizedRCNN, no teacher) on cfg.MODEL.DEVICE, loaded strictly
    from ``weights`` (every tensor of the model in the file, nothing else, every shape right;
    otherwise a :class:`~nst_det.engine.checkpointer.WeightsMismatchError` naming the file and the
    keys), in eval mode."""
    if not weights:
        raise ValueError("MODEL.WEIGHTS is empty: give the checkpoint of the trained student "
                         "(e.g. OUTPUT_DIR/model_final.pth of tools/train_net.py)")
    plain = student_cfg(cfg)
    model = build_model(plain)
    load_weights_strictly(model, weights, "MODEL.WEIGHTS", what="student weights file",
                          loaded_into=f"the plain student ({plain.MODEL.META_ARCHITECTURE}) of "
                                      f"the config")
    model.eval()
    return model


def sample_inputs(cfg, image_file: Optional[str] = None) -> List[Dict]:
    """One input of the detector to trace it with, ``[{"image", "height", "width"}]``: the first
    image of cfg.DATASETS.TEST[0] through the test loader, or ``image_file`` read in INPUT.FORMAT
    and resized as the test loader resizes (ResizeShortestEdge to INPUT.MIN_SIZE_TEST, at most
    INPUT.MAX_SIZE_TEST)."""
    if image_file is None:
        if not cfg.DATASETS.TEST:
            raise ValueError("the config has no DATASETS.TEST to take a sample image from: give "
                             "one with --sample-image")
        from .data import build_test_loader

        return [next(iter(build_test_loader(cfg, cfg.DATASETS.TEST[0])))[0]]
    if not os.path.isfile(image_file):
        raise FileNotFoundError(f"sample image '{image_file}' does not exist")
    import detectron2.data.transforms as T
    from detectron2.data import detection_utils

    original = detection_utils.read_image(image_file, format=cfg.INPUT.FORMAT)
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    image = resize.get_transform(original).apply_image(original)
    height, width = original.shape[:2]
    return [{"image": torch.as_tensor(image.astype("float32").transpose(2, 0, 1)),
             "height": height, "width": width}]


def _inference(model, inputs):
    # R-CNN: the instances before the final resize (Detectron2's tracing export does the same);
    # the dense detectors resize to the input's own size, which changes nothing.
    return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]


def tracing_adapter(model, inputs: List[Dict]):
    """Detectron2's ``TracingAdapter`` of ``model`` (in eval mode) on the image of ``inputs[0]``:
    called with one image tensor, it returns the flattened instances of that image."""
    d2_export = require_detectron2_export()
    model.eval()
    image = inputs[0]["image"].to(torch.float32)  # the test loader gives uint8; ONNX keeps the dtype
    inference = _inference if isinstance(model, GeneralizedRCNN) else None
    return d2_export.TracingAdapter(model, [{"image": image}], inference)


def flattened_outputs(model, image: torch.Tensor):
    """What the exported model returns for ``image``, computed by ``model`` in PyTorch: the tensors
    of its flattened instances, and the adapter (whose ``outputs_schema`` rebuilds them)."""
    adapter = tracing_adapter(model, [{"image": image}])
    with torch.no_grad():
        return adapter(image), adapter


def export_torchscript(model, inputs: List[Dict], path: str):
    """Trace ``model`` (:func:`tracing_adapter` on the image of ``inputs[0]``) with
    ``torch.jit.trace`` and save it at ``path``; returns the adapter (its ``outputs_schema``
    rebuilds the instances from the saved model's outputs)."""
    adapter = tracing_adapter(model, inputs)
    image = adapter.flattened_inputs[0]
    with torch.no_grad():
        traced = torch.jit.trace(adapter, (image,))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.jit.save(traced, path)
    logger.info(f"Saved TorchScript model to {path}; outputs: {adapter.outputs_schema}")
    return adapter


def export_onnx(model, inputs: List[Dict], path: str, opset_version: int = ONNX_OPSET):
    """Export ``model`` (:func:`tracing_adapter` on the image of ``inputs[0]``) with
    ``torch.onnx.export`` (its TorchScript-based exporter, at ``opset_version``) to ``path``; an
    :class:`ExportUnavailableError` when the package ``onnx`` is missing or the exporter fails.
    Returns the adapter."""
    require_detectron2_export()
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes through it)
    except ImportError as e:
        raise ExportUnavailableError(
            f"ONNX export needs the package 'onnx' ({e}): pip install onnx, or export with "
            f"--format torchscript") from e
    adapter = tracing_adapter(model, inputs)
    image = adapter.flattened_inputs[0]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        with torch.no_grad():
            torch.onnx.export(adapter, (image,), path, dynamo=False, opset_version=opset_version)
    except Exception as e:
        if os.path.exists(path):
            os.remove(path)
        raise ExportUnavailableError(
            f"ONNX export of the {type(model).__name__} failed in torch.onnx.export "
            f"({type(e).__name__}: {e}); export with --format torchscript instead") from e
    logger.info(f"Saved ONNX model to {path}; outputs: {adapter.outputs_schema}")
    return adapter
