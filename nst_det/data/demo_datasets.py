"""Registration of the generated demo detection set (``datasets/generate_demo_data.py``) in
Detectron2's catalogs, once as PASCAL VOC (``nst_demo_voc_<split>``, evaluated by the VOC
evaluator) and once as COCO JSON (``nst_demo_coco_<split>``, evaluated by the COCO evaluator).

The data lives in ``$DETECTRON2_DATASETS/demo_det`` (``./datasets/demo_det`` when unset).
"""
import os
import xml.etree.ElementTree as ET
from typing import List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.structures import BoxMode

from .demo_generator import CLASS_NAMES, SPLITS, demo_data_exists

__all__ = ["DEMO_DIRNAME", "demo_root", "demo_dataset_names", "load_voc_detection",
           "register_demo_datasets"]

DEMO_DIRNAME = "demo_det"
# VOC year of the demo set: the VOC evaluator then uses the 2007 (11-point) metric as for VOC2007.
DEMO_VOC_YEAR = 2007


def demo_root(datasets_root: Optional[str] = None) -> str:
    """Directory of the demo set: ``<datasets_root or $DETECTRON2_DATASETS or ./datasets>/demo_det``."""
    root = datasets_root or os.getenv("DETECTRON2_DATASETS", "datasets")
    return os.path.join(root, DEMO_DIRNAME)


def demo_dataset_names(fmt: str, split: str) -> str:
    """Registered name of one split in one format, e.g. ("voc", "test") -> "nst_demo_voc_test"."""
    if fmt not in ("voc", "coco") or split not in SPLITS:
        raise KeyError(f"no demo data set for format '{fmt}' and split '{split}'; formats: voc, "
                       f"coco; splits: {', '.join(SPLITS)}")
    return f"nst_demo_{fmt}_{split}"


def _require_data(dirname: str) -> None:
    if not demo_data_exists(dirname):
        raise FileNotFoundError(
            f"the demo detection data is missing or incomplete in '{dirname}'. Generate it with "
            f"`python datasets/generate_demo_data.py --root {os.path.dirname(dirname) or '.'}` "
            "(the root is $DETECTRON2_DATASETS, ./datasets by default)."
        )


def load_voc_detection(dirname: str, split: str, class_names: Sequence[str]) -> List[dict]:
    """Detectron2 dicts of a set in PASCAL VOC layout (as detectron2's ``load_voc_instances``):
    boxes XYXY_ABS with VOC's 1-based inclusive corners moved to continuous coordinates."""
    image_set = os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(image_set):
        raise FileNotFoundError(f"VOC image set '{image_set}' does not exist")
    with open(image_set) as f:
        file_ids = [line.strip() for line in f if line.strip()]
    dicts = []
    for file_id in file_ids:
        anno_file = os.path.join(dirname, "Annotations", f"{file_id}.xml")
        if not os.path.isfile(anno_file):
            raise FileNotFoundError(f"VOC annotation '{anno_file}' (listed in {image_set}) is missing")
        tree = ET.parse(anno_file)
        record = {
            "file_name": os.path.join(dirname, "JPEGImages", f"{file_id}.jpg"),
            "image_id": file_id,
            "height": int(tree.findtext("./size/height")),
            "width": int(tree.findtext("./size/width")),
        }
        instances = []
        for obj in tree.findall("object"):
            name = obj.findtext("name")
            if name not in class_names:
                raise KeyError(f"'{anno_file}' has class '{name}', not one of {list(class_names)}")
            box = [float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            box[0] -= 1.0  # 1-based inclusive -> continuous: (xmin=1, xmax=W) covers [0, W]
            box[1] -= 1.0
            instances.append({"category_id": list(class_names).index(name), "bbox": box,
                              "bbox_mode": BoxMode.XYXY_ABS})
        record["annotations"] = instances
        dicts.append(record)
    return dicts


def _load_voc(dirname: str, split: str) -> List[dict]:
    _require_data(dirname)
    return load_voc_detection(dirname, split, CLASS_NAMES)


def _load_coco(dirname: str, split: str, name: str) -> List[dict]:
    _require_data(dirname)
    return load_coco_json(os.path.join(dirname, "annotations", f"instances_{split}.json"),
                          os.path.join(dirname, "JPEGImages"), name)


def register_demo_datasets(datasets_root: Optional[str] = None) -> str:
    """(Re-)register every demo split in both formats for data under ``datasets_root``; returns
    the demo directory."""
    dirname = demo_root(datasets_root)
    for split in SPLITS:
        voc_name, coco_name = demo_dataset_names("voc", split), demo_dataset_names("coco", split)
        for name in (voc_name, coco_name):
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
        DatasetCatalog.register(voc_name, lambda d=dirname, s=split: _load_voc(d, s))
        MetadataCatalog.get(voc_name).set(
            thing_classes=list(CLASS_NAMES), dirname=dirname, year=DEMO_VOC_YEAR, split=split,
            evaluator_type="pascal_voc")
        DatasetCatalog.register(
            coco_name, lambda d=dirname, s=split, n=coco_name: _load_coco(d, s, n))
        MetadataCatalog.get(coco_name).set(
            thing_classes=list(CLASS_NAMES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(CLASS_NAMES))},
            json_file=os.path.join(dirname, "annotations", f"instances_{split}.json"),
            image_root=os.path.join(dirname, "JPEGImages"), evaluator_type="coco")
    return dirname
