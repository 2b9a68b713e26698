#!/usr/bin/env python
"""Convert a trained classifier (e.g. an NST-distilled student) into Detectron2 backbone weights.

    python tools/convert_cls_to_d2.py output/cls_nst/model_final.pth inception_bn_nst.pkl --fpn
    python tools/convert_cls_to_d2.py resnet50-torchvision.pth R-50-tv.pkl --arch resnet50 --fpn

Then train a detector with ``MODEL.WEIGHTS <out>`` and the config values printed at the end.
"""
import argparse

import nst_det.classification  # noqa: F401  (first: makes Detectron2 usable on this stack)
from nst_det.convert import RESNET_BLOCKS, convert_checkpoint, d2_config_hints


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="classifier weights: nst_det checkpoint or torchvision state dict (.pth)")
    parser.add_argument("dst", help="output Detectron2 weights, .pkl or .pth")
    parser.add_argument(
        "--arch",
        choices=["inception_bn"] + list(RESNET_BLOCKS),
        help="classifier architecture, checked against the weights (default: detected)",
    )
    parser.add_argument(
        "--fpn", action="store_true", help="prefix keys 'backbone.bottom_up.' for FPN backbones"
    )
    args = parser.parse_args(argv)
    arch = convert_checkpoint(args.src, args.dst, arch=args.arch, fpn=args.fpn)
    hints = d2_config_hints(arch, fpn=args.fpn)
    print(f"wrote the {arch} backbone to {args.dst}; Detectron2 config values for it "
          f"(KEY VALUE pairs for the command line of tools/train_net.py):")
    print(f"  MODEL.WEIGHTS {args.dst}")
    for key, value in hints.items():
        print(f"  {key} {str(value).replace(' ', '')}")


if __name__ == "__main__":
    main()
