#!/usr/bin/env python
"""Generate the built-in demo detection set (coloured circles, squares and triangles on textured
backgrounds) in PASCAL VOC layout and as COCO JSON of the same images.

    python datasets/generate_demo_data.py                 # -> $DETECTRON2_DATASETS/demo_det (./datasets)
    python datasets/generate_demo_data.py --root /data --num-train 500

Registered as nst_demo_voc_{train,val,trainval,test} and nst_demo_coco_{train,val,trainval,test}.

With --official-layout it writes, instead, tiny sets of the same shapes in the official layouts
(VOC2007/, VOC2012/, coco/, imagenet/ under --root), which Detectron2's built-in voc_2007_*,
voc_2012_*, coco_2017_train / coco_2017_val and the ImageNet configs read as they read the real
ones (with DETECTRON2_DATASETS and NST_DATASETS set to --root). It refuses a non-empty target.
"""
import argparse
import os

import nst_det  # noqa: F401  (first: makes Detectron2 usable on this stack)
from nst_det.detection.data import demo_root
from nst_det.research.demo_data import generate_demo_data
from nst_det.research.official_layout import write_coco, write_imagenet, write_voc


def write_official_layout(root, num_train, num_test, seed):
    """VOC2007 (trainval + test), VOC2012 (trainval), COCO (train2017 + val2017) and ImageNet
    (train + val, 3 classes) under ``root``; returns the four directories."""
    return [
        write_voc(root, 2007, {"trainval": num_train, "test": num_test}, seed=seed),
        write_voc(root, 2012, {"trainval": num_train}, seed=seed),
        write_coco(root, {"train2017": num_train, "val2017": num_test}, seed=seed),
        write_imagenet(root, per_class_train=max(1, num_train // 3),
                       per_class_val=max(1, num_test // 3), seed=seed),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None,
                        help="data sets root (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--num-train", type=int, default=240)
    parser.add_argument("--num-val", type=int, default=40)
    parser.add_argument("--num-test", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--official-layout", action="store_true",
                        help="write tiny VOC2007/VOC2012/COCO/ImageNet sets in their official "
                             "layouts under --root instead of the demo set (--num-train images "
                             "in trainval / train2017, --num-test in test / val2017)")
    args = parser.parse_args(argv)
    if args.official_layout:
        root = args.root or os.getenv("DETECTRON2_DATASETS", "datasets")
        out = write_official_layout(root, args.num_train, args.num_test, args.seed)
        print(f"wrote {', '.join(out)}")
        return out
    out = generate_demo_data(demo_root(args.root), num_train=args.num_train, num_val=args.num_val,
                             num_test=args.num_test, seed=args.seed)
    print(f"wrote the demo detection set to {out}")
    return out


if __name__ == "__main__":
    main()
