"""Annotation files read once, checked, by training and evaluation alike.

- :func:`parse_voc_annotation`: one PASCAL VOC XML file, as the format allows it (fractional
  corners, no ``<difficult>``/``<truncated>``/``<pose>``: 0, 0, "Unspecified"); an XML cut short, a
  class not in the data set's classes, a corner missing or not a number, a box with
  ``xmax <= xmin`` or ``ymax <= ymin`` is a ValueError naming the file and the object.
  :func:`load_voc_checked` checks every file of a split with it before Detectron2's
  ``load_voc_instances`` reads them; the VOC evaluator reads its ground truth through it
  (:func:`voc_ground_truth`).
- :func:`check_coco_json`: a COCO instances JSON whose image lacks ``height``/``width``, whose
  annotation lacks ``bbox`` or names an image that is not in the file is a ValueError naming the
  file and the id, before Detectron2's ``load_coco_json`` (which raises ``KeyError: 'height'`` or
  drops the annotation silently).
- :func:`check_dataset_dicts`: one image file listed under two ids is an error; a box of zero or
  negative size is an error in a set that is evaluated and dropped with a warning (naming it) in
  a training set, as Detectron2 drops empty boxes in training anyway.
"""
import json
import logging
import math
import os
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Sequence

__all__ = ["parse_voc_annotation", "load_voc_checked", "voc_ground_truth", "check_coco_json",
           "load_coco_checked", "check_dataset_dicts"]

logger = logging.getLogger(__name__)

_CORNERS = ("xmin", "ymin", "xmax", "ymax")


def _text(element, tag: str) -> Optional[str]:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        return None
    return child.text.strip()


def _number(text: Optional[str]) -> Optional[float]:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def parse_voc_annotation(path: str, class_names: Optional[Sequence[str]] = None) -> Dict:
    """``{"height", "width", "objects": [{"name", "bbox" (the file's 1-based corners, floats),
    "difficult", "truncated", "pose"}]}`` of the VOC XML file ``path``; a ValueError naming the
    file (and the object, by its index and class) for anything the format does not allow."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise ValueError(f"VOC annotation '{path}' is not valid XML (cut short?): {e}") from e
    except OSError as e:
        raise FileNotFoundError(f"VOC annotation '{path}' cannot be read: {e}") from e
    root = tree.getroot()
    size = root.find("size")
    height = _number(_text(size, "height")) if size is not None else None
    width = _number(_text(size, "width")) if size is not None else None
    if height is None or width is None or height <= 0 or width <= 0:
        raise ValueError(f"VOC annotation '{path}' has no valid <size> (<width>, <height> > 0)")
    objects = []
    for index, obj in enumerate(root.findall("object")):
        name = _text(obj, "name")
        where = f"VOC annotation '{path}': object {index} ({name!r})"
        if name is None:
            raise ValueError(f"{where} has no <name>")
        if class_names is not None and name not in class_names:
            raise ValueError(f"{where}: class {name!r} is not one of the data set's classes "
                             f"{list(class_names)}")
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{where} has no <bndbox>")
        corners = [_number(_text(box, c)) for c in _CORNERS]
        bad = [c for c, v in zip(_CORNERS, corners) if v is None]
        if bad:
            raise ValueError(f"{where}: <bndbox> {', '.join(f'<{c}>' for c in bad)} missing or "
                             f"not a finite number")
        x0, y0, x1, y1 = corners
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"{where}: box (xmin {x0:g}, ymin {y0:g}, xmax {x1:g}, ymax {y1:g}) "
                             f"has xmax <= xmin or ymax <= ymin")
        flags = {}
        for flag in ("difficult", "truncated"):
            text = _text(obj, flag)
            value = _number(text) if text is not None else 0.0
            if value not in (0.0, 1.0):
                raise ValueError(f"{where}: <{flag}> is {text!r}, expected 0 or 1")
            flags[flag] = int(value)
        objects.append({"name": name, "bbox": corners, "pose": _text(obj, "pose") or "Unspecified",
                        **flags})
    return {"height": int(height), "width": int(width), "objects": objects}


def _voc_file_ids(image_set: str) -> List[str]:
    with open(image_set) as f:
        return [line.strip() for line in f if line.strip()]


def _duplicates_message(ids: Sequence[str], what: str) -> Optional[str]:
    seen, twice = set(), []
    for i in ids:
        if i in seen and i not in twice:
            twice.append(i)
        seen.add(i)
    if not twice:
        return None
    return f"{what} lists {twice[:5]}{' ...' if len(twice) > 5 else ''} more than once"


def voc_ground_truth(annotation_template: str, image_set: str,
                     class_names: Sequence[str]) -> Dict[str, List[Dict]]:
    """{file id: objects} of every image of ``image_set`` (``annotation_template.format(id)``),
    each file checked by :func:`parse_voc_annotation`; an image listed twice is an error."""
    file_ids = _voc_file_ids(image_set)
    problem = _duplicates_message(file_ids, f"VOC image set '{image_set}'")
    if problem:
        raise ValueError(f"{problem}: each image would count twice")
    return {i: parse_voc_annotation(annotation_template.format(i), class_names)["objects"]
            for i in file_ids}


def load_voc_checked(dirname: str, split: str, class_names: Sequence[str]) -> List[Dict]:
    """Detectron2's ``load_voc_instances(dirname, split, class_names)`` after every annotation
    file of the split passed :func:`parse_voc_annotation`."""
    from detectron2.data.datasets.pascal_voc import load_voc_instances

    voc_ground_truth(os.path.join(dirname, "Annotations", "{}.xml"),
                     os.path.join(dirname, "ImageSets", "Main", f"{split}.txt"), class_names)
    return load_voc_instances(dirname, split, class_names)


_COCO_CHECKED: Dict = {}  # (path, mtime, size) of the files already checked in this process


def _coco_problem(data, path: str) -> Optional[str]:
    source = f"COCO annotation file '{path}'"
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations", []), list):
        return f"{source} is not a COCO instances JSON (an object with 'images' and 'annotations')"
    image_ids, files = set(), {}
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image:
            return f"{source}: images[{index}] has no 'id'"
        where = f"{source}: image id {image['id']!r} (images[{index}])"
        missing = [k for k in ("file_name", "height", "width") if k not in image]
        if missing:
            return f"{where} lacks {missing}"
        if not all(isinstance(image[k], int) and not isinstance(image[k], bool) and image[k] > 0
                   for k in ("height", "width")):
            return (f"{where} has height {image['height']!r}, width {image['width']!r}: "
                    f"expected integers > 0")
        if image["id"] in image_ids:
            return f"{source}: image id {image['id']!r} appears twice in 'images'"
        image_ids.add(image["id"])
        if image["file_name"] in files:
            return (f"{source}: image file {image['file_name']!r} is listed under two image ids, "
                    f"{files[image['file_name']]!r} and {image['id']!r}")
        files[image["file_name"]] = image["id"]
    for index, anno in enumerate(data.get("annotations", [])):
        if not isinstance(anno, dict):
            return f"{source}: annotations[{index}] is not an object"
        where = f"{source}: annotation id {anno.get('id')!r} (annotations[{index}])"
        if anno.get("image_id") not in image_ids:
            return f"{where} names image id {anno.get('image_id')!r}, which is not in 'images'"
        if "bbox" not in anno:
            return f"{where} (image id {anno['image_id']!r}) has no 'bbox'"
        bbox = anno["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in bbox):
            return f"{where} (image id {anno['image_id']!r}) has bbox {bbox!r}: expected 4 " \
                   f"finite numbers [x, y, w, h]"
        if "category_id" not in anno:
            return f"{where} (image id {anno['image_id']!r}) has no 'category_id'"
    return None


def check_coco_json(path: str) -> None:
    """A ValueError naming ``path`` and the image or annotation id when the COCO instances JSON
    has an image without ``file_name``/``height``/``width`` (or an id twice, or a file under two
    ids), or an annotation without ``bbox``/``category_id`` or naming an image not in the file."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
    if key in _COCO_CHECKED:
        return
    with open(path) as f:
        try:
            data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"COCO annotation file '{path}' is not valid JSON: {e}") from e
    problem = _coco_problem(data, path)
    if problem:
        raise ValueError(problem)
    _COCO_CHECKED[key] = True


def load_coco_checked(json_file: str, image_root: str, dataset_name: Optional[str] = None):
    """Detectron2's ``load_coco_json`` after :func:`check_coco_json`."""
    from detectron2.data.datasets.coco import load_coco_json

    check_coco_json(json_file)
    return load_coco_json(json_file, image_root, dataset_name)


def _box_size(annotation: Dict):
    from detectron2.structures import BoxMode

    x0, y0, x1, y1 = BoxMode.convert(list(annotation["bbox"]), annotation["bbox_mode"],
                                     BoxMode.XYXY_ABS)
    return x1 - x0, y1 - y0


def check_dataset_dicts(dicts: List[Dict], names: Sequence[str], evaluation: bool) -> List[Dict]:
    """``dicts`` (of the data sets ``names``) after the checks both training and evaluation make:
    one image file under two image ids is a ValueError; a box of zero or negative width or height
    is a ValueError when ``evaluation`` (it would count as an object no detection can match) and
    dropped with a warning naming the file and the box otherwise."""
    files = {}
    for d in dicts:
        name, image_id = d.get("file_name"), d.get("image_id")
        if name in files and files[name] != image_id:
            raise ValueError(f"data set(s) {list(names)}: image file '{name}' is listed under two "
                             f"image ids, {files[name]!r} and {image_id!r}: it would count twice")
        files.setdefault(name, image_id)
    for d in dicts:
        annotations = d.get("annotations")
        if not annotations:
            continue
        empty = [a for a in annotations if "bbox" in a and min(_box_size(a)) <= 0]
        if not empty:
            continue
        shown = [[round(float(v), 2) for v in a["bbox"]] for a in empty[:5]]
        ids = [a["id"] for a in empty[:5] if "id" in a]
        what = (f"image '{d.get('file_name')}' (image id {d.get('image_id')!r}) of {list(names)} "
                f"has {len(empty)} box(es) of zero or negative width or height: {shown}"
                + (f" (annotation ids {ids})" if ids else ""))
        if evaluation:
            raise ValueError(f"{what}; an evaluation set cannot hold them (no detection can match "
                             f"them, so they would lower recall and AP): fix or remove them")
        logger.warning(f"{what}: dropped from training")
        d["annotations"] = [a for a in annotations if not any(a is e for e in empty)]
    return dicts
