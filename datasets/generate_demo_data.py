#!/usr/bin/env python
"""Generate the built-in demo detection set (coloured circles, squares and triangles on textured
backgrounds) in PASCAL VOC layout and as COCO JSON of the same images.

    python datasets/generate_demo_data.py                 # -> $DETECTRON2_DATASETS/demo_det (./datasets)
    python datasets/generate_demo_data.py --root /data --num-train 500

Registered as nst_demo_voc_{train,val,trainval,test} and nst_demo_coco_{train,val,trainval,test}.
"""
import argparse

import nst_det  # noqa: F401  (first: makes Detectron2 usable on this stack)
from nst_det.data import demo_root, generate_demo_data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None,
                        help="data sets root (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--num-train", type=int, default=240)
    parser.add_argument("--num-val", type=int, default=40)
    parser.add_argument("--num-test", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = generate_demo_data(demo_root(args.root), num_train=args.num_train, num_val=args.num_val,
                             num_test=args.num_test, seed=args.seed)
    print(f"wrote the demo detection set to {out}")
    return out


if __name__ == "__main__":
    main()
