"""The built-in demo detection set: coloured circles, squares and triangles on textured backgrounds,
written in real PASCAL VOC layout and as COCO JSON of the same images (deterministic per seed).

Layout under ``root`` (``$DETECTRON2_DATASETS/demo_det`` by default)::

    JPEGImages/000001.jpg ...
    Annotations/000001.xml ...           VOC xml, 1-based inclusive pixel boxes
    ImageSets/Main/{train,val,trainval,test}.txt
    annotations/instances_{train,val,trainval,test}.json   COCO, [x, y, w, h] boxes, ids 1..3

Its drawing functions (:func:`textured_background`, :func:`draw_shape`, :func:`random_colour`,
:func:`shapes_image`) and :func:`voc_annotation` also draw the tiny sets in the official VOC,
COCO and ImageNet layouts (:mod:`nst_det.research.official_layout`).
"""
import json
import os
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from nst_det.detection.data.demo_datasets import CLASS_NAMES, SPLITS, demo_data_exists

__all__ = ["CLASS_NAMES", "SPLITS", "generate_demo_data", "demo_data_exists", "draw_shape",
           "random_colour", "shapes_image", "textured_background", "voc_annotation"]

_IMAGE_SET_DIR = os.path.join("ImageSets", "Main")


def textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted texture [H, W, 3] uint8: smooth colour noise, stripes and pixel noise."""
    coarse = rng.uniform(60, 190, size=(4, 5, 3)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height),
                                                                     Image.BILINEAR), np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 20)
    stripes = 18 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    noise = rng.normal(0, 10, size=(height, width, 3))
    image = smooth + stripes[..., None] + noise
    return np.clip(image, 0, 255).astype(np.uint8)


def _overlaps(box, boxes, max_iou=0.05) -> bool:
    for other in boxes:
        ix = max(0, min(box[2], other[2]) - max(box[0], other[0]) + 1)
        iy = max(0, min(box[3], other[3]) - max(box[1], other[1]) + 1)
        inter = ix * iy
        area = lambda b: (b[2] - b[0] + 1) * (b[3] - b[1] + 1)  # noqa: E731
        if inter / (area(box) + area(other) - inter) > max_iou:
            return True
    return False


def _outline(shape: str, box) -> List[float]:
    """Outline of the shape drawn in ``box`` (inclusive pixel bounds) as a flat polygon
    [x0, y0, x1, y1, ...] in continuous coordinates (pixel (i, j) covers [i, i+1] x [j, j+1])."""
    x0, y0, x1, y1 = box
    if shape == "square":
        points = [(x0, y0), (x1 + 1, y0), (x1 + 1, y1 + 1), (x0, y1 + 1)]
    elif shape == "triangle":
        points = [((x0 + x1 + 1) / 2, y0), (x1 + 1, y1 + 1), (x0, y1 + 1)]
    else:
        cx, cy, rx, ry = (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2, (x1 - x0 + 1) / 2, (y1 - y0 + 1) / 2
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        points = list(zip(cx + rx * np.cos(angles), cy + ry * np.sin(angles)))
    return [round(float(c), 2) for point in points for c in point]


def draw_shape(image: Image.Image, shape: str, box, colour) -> dict:
    """Paint one ``shape`` (one of ``CLASS_NAMES``) in ``colour`` (r, g, b) inside ``box``
    (inclusive pixel bounds x0, y0, x1, y1) of ``image``, in place.

    Returns ``{"box": (x0, y0, x1, y1) inclusive bounds of the painted pixels, "area": number of
    painted pixels, "polygon": the shape's outline as [x0, y0, x1, y1, ...] (continuous)}``.
    """
    if shape not in CLASS_NAMES:
        raise KeyError(f"unknown shape '{shape}'; shapes: {', '.join(CLASS_NAMES)}")
    mask = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=255)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=255)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=255)
    image.paste(colour, (0, 0) + image.size, mask)
    left, top, right, bottom = mask.getbbox()
    return {"box": (left, top, right - 1, bottom - 1),
            "area": int(np.count_nonzero(np.asarray(mask))), "polygon": _outline(shape, box)}


def random_colour(rng: np.random.Generator, channel: Optional[int] = None) -> Tuple[int, int, int]:
    """A saturated colour (r, g, b): one channel in [200, 256), one in [0, 80), one in [0, 256),
    in random order, or with the strong one at ``channel`` (0 red, 1 green, 2 blue) when given."""
    strong, weak, free = (int(rng.integers(200, 256)), int(rng.integers(0, 80)),
                          int(rng.integers(0, 256)))
    if channel is None:
        return tuple(int(c) for c in rng.permutation([strong, weak, free]))
    colour = [weak, min(free, 120)]
    colour.insert(channel, strong)
    return tuple(colour)


def shapes_image(rng: np.random.Generator, height: int, width: int, max_objects: int,
                 shape_names: Sequence[str] = CLASS_NAMES):
    """One image [H, W, 3] uint8 with 1 to ``max_objects`` non-overlapping shapes of 18 px to
    half the short side, and its objects ``[{"name", "box", "area", "polygon"}]`` (as
    :func:`draw_shape`; ``name`` is the shape's name in ``shape_names``, which lists a name per
    shape of ``CLASS_NAMES``). Needs ``min(height, width) >= 38``."""
    if min(height, width) < 38:
        raise ValueError(f"images of {height} x {width} are too small for the shapes: need at "
                         "least 38 pixels on the short side")
    image = Image.fromarray(textured_background(rng, height, width))
    objects, boxes = [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            size = int(rng.integers(18, min(height, width) // 2))
            x0 = int(rng.integers(0, width - size))
            y0 = int(rng.integers(0, height - size))
            box = (x0, y0, x0 + size - 1, y0 + size - 1)
            if not _overlaps(box, boxes):
                break
        else:
            continue
        index = int(rng.integers(len(CLASS_NAMES)))
        painted = draw_shape(image, CLASS_NAMES[index], box, random_colour(rng))
        boxes.append(box)
        objects.append({"name": shape_names[index], **painted})
    return np.asarray(image), objects


def voc_annotation(file_id: str, height: int, width: int, objects,
                   folder: str = "demo_det") -> ET.ElementTree:
    """PASCAL VOC annotation of one image: ``<size>`` and, per object ``{"name", "box"
    (inclusive 0-based pixel bounds), "difficult" (optional, 0 or 1)}``, an ``<object>`` whose
    ``<bndbox>`` is 1-based and inclusive as in VOC (pixel 0 is 1)."""
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "folder").text = folder
    ET.SubElement(annotation, "filename").text = f"{file_id}.jpg"
    size = ET.SubElement(annotation, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(annotation, "segmented").text = "0"
    for obj in objects:
        node = ET.SubElement(annotation, "object")
        ET.SubElement(node, "name").text = obj["name"]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = "0"
        ET.SubElement(node, "difficult").text = str(int(obj.get("difficult", 0)))
        bndbox = ET.SubElement(node, "bndbox")
        x0, y0, x1, y1 = obj["box"]
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1 + 1), ("ymax", y1 + 1)):
            ET.SubElement(bndbox, tag).text = str(value)
    return ET.ElementTree(annotation)


def _coco_dict(ids: List[str], records: Dict[str, dict]) -> dict:
    images, annotations = [], []
    for file_id in ids:
        rec = records[file_id]
        image_id = int(file_id)
        images.append({"id": image_id, "file_name": f"{file_id}.jpg",
                       "height": rec["height"], "width": rec["width"]})
        for obj in rec["objects"]:
            x0, y0, x1, y1 = obj["box"]
            w, h = x1 - x0 + 1, y1 - y0 + 1
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": CLASS_NAMES.index(obj["name"]) + 1,
                "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": 0,
            })
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"}
                  for i, n in enumerate(CLASS_NAMES)]
    return {"info": {"description": "nst_det demo detection set"}, "images": images,
            "annotations": annotations, "categories": categories}


def generate_demo_data(root: str, num_train: int = 240, num_val: int = 40, num_test: int = 80,
                       seed: int = 0, height: int = 128, width: int = 160,
                       max_objects: int = 4) -> str:
    """Write the demo set under ``root`` (VOC layout + COCO JSON); returns ``root``."""
    if min(num_train, num_test) < 1 or num_val < 0:
        raise ValueError(f"need num_train >= 1, num_test >= 1, num_val >= 0; got {num_train}, "
                         f"{num_test}, {num_val}")
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "Annotations", _IMAGE_SET_DIR, "annotations"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    total = num_train + num_val + num_test
    ids = [f"{i:06d}" for i in range(1, total + 1)]
    records = {}
    for file_id in ids:
        image, objects = shapes_image(rng, height, width, max_objects)
        Image.fromarray(image).save(os.path.join(root, "JPEGImages", f"{file_id}.jpg"), quality=95)
        voc_annotation(file_id, height, width, objects).write(
            os.path.join(root, "Annotations", f"{file_id}.xml"))
        records[file_id] = {"height": height, "width": width, "objects": objects}
    splits = {
        "train": ids[:num_train],
        "val": ids[num_train:num_train + num_val],
        "trainval": ids[:num_train + num_val],
        "test": ids[num_train + num_val:],
    }
    for split, split_ids in splits.items():
        with open(os.path.join(root, _IMAGE_SET_DIR, f"{split}.txt"), "w") as f:
            f.write("".join(f"{i}\n" for i in split_ids))
        with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(_coco_dict(split_ids, records), f)
    return root
