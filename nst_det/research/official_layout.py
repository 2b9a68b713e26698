"""Tiny but real data sets in the official layouts of PASCAL VOC, COCO and ImageNet, drawn by the
demo's shapes generator (:mod:`nst_det.research.demo_data`), deterministic per seed.

They let Detectron2's own built-in data sets (``voc_2007_trainval``, ``coco_2017_val``, ...) and
nst_det's ImageNet reader run on files laid out exactly as the real ones, in seconds. Layouts
under ``root`` (the directory ``$DETECTRON2_DATASETS`` and ``$NST_DATASETS`` name)::

    VOC2007/JPEGImages/000001.jpg ...
    VOC2007/Annotations/000001.xml ...         <size>, per <object>: <name>, <difficult>, <bndbox>
                                               (1-based inclusive pixel corners)
    VOC2007/ImageSets/Main/{train,val,trainval,test}.txt
    VOC2012/...                                 same, ids 2012_000001 ..., trainval/train/val only
    coco/annotations/instances_{train2017,val2017}.json   the 80 COCO categories with their ids,
                                               bbox [x, y, w, h], area, iscrowd, segmentation
    coco/{train2017,val2017}/000000000001.jpg ...
    imagenet/train/<wnid>/<wnid>_<k>.JPEG
    imagenet/val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG

Shapes are labelled with real class names (``SHAPE_CLASSES``): a circle is a ``person``, a square a
``car`` and a triangle a ``bird``, in VOC and in COCO alike (COCO ids 1, 3 and 16). The other
classes are declared (all 20 VOC names, all 80 COCO categories) but have no instance. In VOC,
every third object (the 3rd, 6th, ... of a split) is marked ``<difficult>1``.

Each writer refuses (``FileExistsError``) a target directory (``VOC2007``, ``coco``, ...) that
exists and is not empty, so that it never mixes with or overwrites a real data set.
"""
import json
import os
from typing import Dict, Optional, Sequence

import numpy as np
from PIL import Image

from nst_det.detection.data.demo_datasets import CLASS_NAMES as SHAPES
from nst_det.research.demo_data import (
    draw_shape,
    random_colour,
    shapes_image,
    textured_background,
    voc_annotation,
)

__all__ = ["SHAPE_CLASSES", "IMAGENET_CLASSES", "voc_class_names", "coco_categories",
           "write_voc", "write_coco", "write_imagenet"]

#: The class name each shape of the demo generator is labelled with, in VOC and COCO.
SHAPE_CLASSES = {"circle": "person", "square": "car", "triangle": "bird"}
#: WordNet ids of the first ImageNet-1k classes (tench, goldfish, great white shark).
IMAGENET_CLASSES = ("n01440764", "n01443537", "n01484850")
VOC_SPLITS = ("trainval", "test")
_JPEG_QUALITY = 95


def voc_class_names() -> tuple:
    """The 20 PASCAL VOC class names, as Detectron2 lists them."""
    from detectron2.data.datasets.pascal_voc import CLASS_NAMES

    return tuple(CLASS_NAMES)


def coco_categories() -> list:
    """The 80 COCO detection categories ``[{"id", "name"}]`` with their real ids (1 to 90, with
    gaps), as Detectron2's built-in metadata lists them."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"] == 1]


def _rng(seed: int, tag: int) -> np.random.Generator:
    """One generator per data set, so that each one depends only on ``seed``."""
    return np.random.default_rng([seed, tag])


def _check_counts(splits: Dict[str, int], allowed: Sequence[str], what: str):
    for split, count in splits.items():
        if split not in allowed:
            raise ValueError(f"{what}: unknown split '{split}'; splits: {', '.join(allowed)}")
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"{what}: split '{split}' needs at least one image, got {count!r}")


def _require_new(dirname: str, what: str):
    """Refuse to write into a non-empty directory: the tiny set would mix with the data there
    (a real VOC2007 or COCO download, say)."""
    if os.path.isdir(dirname) and os.listdir(dirname):
        raise FileExistsError(
            f"{what}: '{dirname}' exists and is not empty; it writes only into a new or empty "
            "directory, so that its images never mix with (or overwrite) a real data set")


def _save_jpeg(image: np.ndarray, path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path, quality=_JPEG_QUALITY)


def write_voc(root: str, year: int = 2007, splits: Optional[Dict[str, int]] = None,
              seed: int = 0, height: int = 96, width: int = 128, max_objects: int = 3) -> str:
    """Write ``root/VOC<year>`` in PASCAL VOC layout; returns that directory.

    Args:
        splits: number of images per split, among ``trainval`` and ``test``; default
            ``{"trainval": 4, "test": 2}`` for 2007 and ``{"trainval": 4}`` otherwise (VOC2012 has
            no public test set). ``train.txt`` lists the first ceil(n / 2) images of
            ``trainval`` and ``val.txt`` the others, so ``trainval = train + val`` as in VOC.
        height, width: image size in pixels (all images alike; at least 38 on the short side).
        max_objects: at most this many shapes per image (at least one).

    Image ids are ``000001``, ... for 2007 and ``<year>_000001``, ... for other years.
    """
    if splits is None:
        splits = {"trainval": 4, "test": 2} if year == 2007 else {"trainval": 4}
    _check_counts(splits, VOC_SPLITS, f"write_voc(year={year})")
    dirname = os.path.join(root, f"VOC{year}")
    _require_new(dirname, "write_voc")
    image_set_dir = os.path.join(dirname, "ImageSets", "Main")
    os.makedirs(os.path.join(dirname, "Annotations"), exist_ok=True)
    os.makedirs(image_set_dir, exist_ok=True)
    rng = _rng(seed, year)
    shape_names = [SHAPE_CLASSES[s] for s in SHAPES]
    prefix = "" if year == 2007 else f"{year}_"
    lists, next_id = {}, 1
    for split in VOC_SPLITS:
        count = splits.get(split, 0)
        ids = [f"{prefix}{i:06d}" for i in range(next_id, next_id + count)]
        next_id += count
        num_objects = 0
        for file_id in ids:
            image, objects = shapes_image(rng, height, width, max_objects, shape_names)
            for obj in objects:
                num_objects += 1
                obj["difficult"] = int(num_objects % 3 == 0)
            _save_jpeg(image, os.path.join(dirname, "JPEGImages", f"{file_id}.jpg"))
            voc_annotation(file_id, height, width, objects, folder=f"VOC{year}").write(
                os.path.join(dirname, "Annotations", f"{file_id}.xml"))
        if split == "trainval":
            half = (count + 1) // 2
            lists.update(trainval=ids, train=ids[:half], val=ids[half:])
        elif ids:
            lists[split] = ids
    for split, ids in lists.items():
        with open(os.path.join(image_set_dir, f"{split}.txt"), "w") as f:
            f.write("".join(f"{i}\n" for i in ids))
    return dirname


def write_coco(root: str, splits: Optional[Dict[str, int]] = None, seed: int = 0,
               height: int = 96, width: int = 128, max_objects: int = 3) -> str:
    """Write ``root/coco`` in COCO layout; returns that directory.

    Args:
        splits: number of images per split, named as COCO names them (``train2017``,
            ``val2017``, ``val2014``, ...); default ``{"train2017": 4, "val2017": 2}``.
        height, width, max_objects: as :func:`write_voc`.

    ``annotations/instances_<split>.json`` declares the 80 categories with their real ids
    (:func:`coco_categories`); each annotation has ``bbox`` [x, y, w, h] (continuous pixels: the
    painted pixels span [x, x + w] x [y, y + h]), ``area`` (painted pixels), ``iscrowd`` 0 and
    a one-polygon ``segmentation``. Image and annotation ids are unique over all splits; images
    are ``<split>/<image id, 12 digits>.jpg``.
    """
    if splits is None:
        splits = {"train2017": 4, "val2017": 2}
    for split, count in splits.items():
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"write_coco: split '{split}' needs at least one image, got {count!r}")
    categories = coco_categories()
    category_id = {c["name"]: c["id"] for c in categories}
    dirname = os.path.join(root, "coco")
    _require_new(dirname, "write_coco")
    os.makedirs(os.path.join(dirname, "annotations"), exist_ok=True)
    rng = _rng(seed, 2017)
    shape_names = [SHAPE_CLASSES[s] for s in SHAPES]
    image_id = annotation_id = 0
    for split, count in splits.items():
        images, annotations = [], []
        for _ in range(count):
            image_id += 1
            file_name = f"{image_id:012d}.jpg"
            image, objects = shapes_image(rng, height, width, max_objects, shape_names)
            _save_jpeg(image, os.path.join(dirname, split, file_name))
            images.append({"id": image_id, "file_name": file_name, "height": height,
                           "width": width, "license": 0})
            for obj in objects:
                annotation_id += 1
                x0, y0, x1, y1 = obj["box"]
                annotations.append({
                    "id": annotation_id, "image_id": image_id,
                    "category_id": category_id[obj["name"]],
                    "bbox": [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
                    "area": float(obj["area"]), "iscrowd": 0,
                    "segmentation": [obj["polygon"]],
                })
        content = {
            "info": {"description": "nst_det shapes in COCO layout", "version": "1.0",
                     "year": 2017},
            "licenses": [{"id": 0, "name": "generated", "url": ""}],
            "images": images, "annotations": annotations, "categories": categories,
        }
        with open(os.path.join(dirname, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(content, f)
    return dirname


def write_imagenet(root: str, classes: Sequence[str] = IMAGENET_CLASSES, per_class_train: int = 4,
                   per_class_val: int = 2, size: int = 64, seed: int = 0) -> str:
    """Write ``root/imagenet`` in ImageNet's class-folder layout (``train/<wnid>/*.JPEG`` and
    ``val/<wnid>/*.JPEG``, as torchvision's ``ImageFolder`` reads it); returns that directory.

    Images are ``size`` x ``size`` (at least 32): one shape on a textured background. Class ``i``
    (in the order given) is a ``CLASS_NAMES[i % 3]`` of the demo generator whose strong colour
    channel is ``(i // 3)`` (red, green, blue), so at most 9 classes tell apart.
    """
    classes = list(classes)
    if not 1 <= len(classes) <= 9 or len(set(classes)) != len(classes):
        raise ValueError(f"write_imagenet: need 1 to 9 distinct class names, got {classes}")
    if per_class_train < 1 or per_class_val < 0:
        raise ValueError(f"write_imagenet: need per_class_train >= 1 and per_class_val >= 0, got "
                         f"{per_class_train} and {per_class_val}")
    if size < 32:
        raise ValueError(f"write_imagenet: size {size} is too small, need at least 32 pixels")
    dirname = os.path.join(root, "imagenet")
    _require_new(dirname, "write_imagenet")
    rng = _rng(seed, 1000)
    val_index = 0
    for index, wnid in enumerate(classes):
        for split, count in (("train", per_class_train), ("val", per_class_val)):
            os.makedirs(os.path.join(dirname, split, wnid), exist_ok=True)
            for k in range(1, count + 1):
                image = Image.fromarray(textured_background(rng, size, size))
                side = int(rng.integers(int(size * 0.4), int(size * 0.8) + 1))
                x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
                draw_shape(image, SHAPES[index % 3], (x0, y0, x0 + side - 1, y0 + side - 1),
                           random_colour(rng, channel=index // 3))
                if split == "train":
                    name = f"{wnid}_{k}.JPEG"
                else:
                    val_index += 1
                    name = f"ILSVRC2012_val_{val_index:08d}.JPEG"
                _save_jpeg(np.asarray(image), os.path.join(dirname, split, wnid, name))
    return dirname
