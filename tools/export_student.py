#!/usr/bin/env python
"""Export the student of a (distillation) config for deployment: the plain detector alone (no
teacher), loaded strictly from a checkpoint, traced with Detectron2's TracingAdapter into
TorchScript (OUTPUT/model.ts) or ONNX (OUTPUT/model.onnx), on the CPU.

    python tools/export_student.py --config-file configs/voc_frcnn_nst.yaml \\
        MODEL.WEIGHTS output/voc_frcnn_nst/model_final.pth --output exported/
    python tools/export_student.py --config-file CFG.yaml MODEL.WEIGHTS ckpt.pth --output DIR \\
        --format onnx --sample-image image.jpg

Needs Detectron2's main (Detectron2 v0.6's export package imports caffe2, which torch no longer
ships). The traced model takes one image tensor [3, H, W] (INPUT.FORMAT, resized as for testing)
and returns its detections flattened: see nst_det/detection/export.py.
"""
import argparse
import os
import sys

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models and data sets)
from detectron2.utils.logger import setup_logger

from nst_det.detection import export
from nst_det.detection.load_config import add_config_file_arguments, load_nst_cfg
from nst_det.engine.checkpointer import WeightsMismatchError


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_file_arguments(parser)
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="folder of the exported model (model.ts or model.onnx)")
    parser.add_argument("--format", choices=sorted(export.EXPORT_FORMATS), default="torchscript")
    parser.add_argument("--sample-image", metavar="IMG",
                        help="image to trace with (default: the first of DATASETS.TEST[0])")
    return parser


def main(argv=None):
    parser = argument_parser()
    args = parser.parse_intermixed_args(argv)
    if not args.config_file:
        parser.error("--config-file is required")
    setup_logger(name="nst_det")
    setup_logger(name="detectron2")
    try:
        export.require_detectron2_export()  # before anything is built: v0.6 cannot export
        cfg = load_nst_cfg(args.config_file, list(args.opts) + [
            "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"])
        model = export.build_plain_student(cfg, cfg.MODEL.WEIGHTS)
        inputs = export.sample_inputs(cfg, args.sample_image)
        path = os.path.join(args.output, export.EXPORT_FORMATS[args.format])
        if args.format == "torchscript":
            export.export_torchscript(model, inputs, path)
        else:
            export.export_onnx(model, inputs, path)
    except (export.ExportUnavailableError, WeightsMismatchError, FileNotFoundError,
            ValueError) as e:
        print(f"export_student.py: error: {e}", file=sys.stderr)
        return 1
    print(f"Exported the {type(model).__name__} student of {args.config_file} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
