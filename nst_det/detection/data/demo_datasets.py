"""Registration of the generated demo detection set (``datasets/generate_demo_data.py``; its
writer is :mod:`nst_det.research.demo_data`) in
Detectron2's catalogs, once as PASCAL VOC (``nst_demo_voc_<split>``, evaluated by the VOC
evaluator) and once as COCO JSON (``nst_demo_coco_<split>``, evaluated by the COCO evaluator).

Both go through Detectron2's own ``register_pascal_voc`` / ``load_voc_instances`` and
``register_coco_instances`` / ``load_coco_json``. The data lives in
``$DETECTRON2_DATASETS/demo_det`` (``./datasets/demo_det`` when unset).
"""
import os
from typing import Callable, Optional

from detectron2.data import DatasetCatalog
from .registration import register_coco, register_voc, unregister

__all__ = ["CLASS_NAMES", "SPLITS", "DEMO_DIRNAME", "demo_root", "demo_dataset_names",
           "demo_data_exists", "register_demo_datasets"]

# The demo set's classes, in the order of their contiguous ids (COCO category ids 1, 2, 3).
CLASS_NAMES = ("circle", "square", "triangle")
# The splits it has, each in both formats.
SPLITS = ("train", "val", "trainval", "test")

DEMO_DIRNAME = "demo_det"
# VOC year of the demo set: the VOC evaluator then uses the 2007 (11-point) metric as for VOC2007.
DEMO_VOC_YEAR = 2007


def demo_root(datasets_root: Optional[str] = None) -> str:
    """Directory of the demo set: ``<datasets_root or $DETECTRON2_DATASETS or ./datasets>/demo_det``."""
    root = datasets_root or os.getenv("DETECTRON2_DATASETS", "datasets")
    return os.path.join(root, DEMO_DIRNAME)


def demo_data_exists(root: str) -> bool:
    """True when ``root`` holds a complete generated set (every split list and COCO file)."""
    return all(
        os.path.isfile(os.path.join(root, "ImageSets", "Main", f"{s}.txt"))
        and os.path.isfile(os.path.join(root, "annotations", f"instances_{s}.json"))
        for s in SPLITS
    )


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


def _check_data_when_loading(name: str, dirname: str) -> None:
    """Wrap the loader Detectron2 registered for ``name`` so that loading first checks that the
    demo data exists (registration itself never touches the disk)."""
    load: Callable[[], list] = DatasetCatalog[name]
    DatasetCatalog.remove(name)

    def load_demo():
        _require_data(dirname)
        return load()

    DatasetCatalog.register(name, load_demo)


def register_demo_datasets(datasets_root: Optional[str] = None) -> str:
    """(Re-)register every demo split in both formats for data under ``datasets_root``; returns
    the demo directory.

    Registered through Detectron2's own ``register_pascal_voc`` (metadata ``thing_classes``,
    ``dirname``, ``year``, ``split``; plus ``evaluator_type="pascal_voc"``) and
    ``register_coco_instances`` (``json_file``, ``image_root``, ``evaluator_type="coco"``; plus
    ``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` before loading), so the demo
    reads its files with the loaders every VOC and COCO user goes through.
    """
    dirname = demo_root(datasets_root)
    for split in SPLITS:
        voc_name, coco_name = demo_dataset_names("voc", split), demo_dataset_names("coco", split)
        for name in (voc_name, coco_name):
            unregister(name)
        register_voc(voc_name, dirname, split, DEMO_VOC_YEAR, CLASS_NAMES)
        _check_data_when_loading(voc_name, dirname)
        register_coco(
            coco_name,
            {"thing_classes": list(CLASS_NAMES),
             "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(CLASS_NAMES))}},
            os.path.join(dirname, "annotations", f"instances_{split}.json"),
            os.path.join(dirname, "JPEGImages"),
        )
        _check_data_when_loading(coco_name, dirname)
    return dirname
