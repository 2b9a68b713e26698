"""What every registration of nst_det's data sets shares (the demo set, the config's
``DATASETS.VOC_CUSTOM``, the folders ``tools/eval_predictions.py`` evaluates against): a folder in
PASCAL VOC layout registered with its evaluator type, and a name taken out of Detectron2's
catalogs. COCO sets need neither: Detectron2's ``register_coco_instances`` sets
``evaluator_type="coco"`` itself."""
from typing import Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances, register_pascal_voc

from .checked import load_coco_checked, load_voc_checked

__all__ = ["register_voc", "register_coco", "check_builtin_datasets", "unregister"]


def register_voc(name: str, dirname: str, split: str, year: int, class_names: Sequence[str],
                 **metadata) -> None:
    """Detectron2's ``register_pascal_voc(name, dirname, split, year, class_names)``, with the
    metadata ``evaluator_type="pascal_voc"`` (which Detectron2 adds only to its built-in VOC sets)
    and ``metadata``."""
    register_pascal_voc(name, dirname, split, year, list(class_names))
    _check_voc_when_loading(name, dirname, split, list(class_names))
    MetadataCatalog.get(name).set(evaluator_type="pascal_voc", **metadata)


def _check_voc_when_loading(name: str, dirname: str, split: str, class_names) -> None:
    """Load ``name`` through nst_det.detection.data.checked.load_voc_checked (Detectron2's loader
    after every annotation file is checked), the metadata left as registered."""
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_voc_checked(dirname, split, class_names))


def register_coco(name: str, metadata: dict, json_file: str, image_root: str) -> None:
    """Detectron2's ``register_coco_instances``, the JSON checked
    (nst_det.detection.data.checked.check_coco_json) before Detectron2's ``load_coco_json``."""
    register_coco_instances(name, metadata, json_file, image_root)
    _check_coco_when_loading(name, json_file, image_root)


def _check_coco_when_loading(name: str, json_file: str, image_root: str) -> None:
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_coco_checked(json_file, image_root, name))


def check_builtin_datasets() -> None:
    """Detectron2's built-in VOC (``voc_*``) and COCO instances (``coco_*``) sets, loaded through
    the checks of nst_det.detection.data.checked like nst_det's own."""
    for name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if name.startswith("voc_") and all(meta.get(k, None) is not None
                                           for k in ("dirname", "split", "thing_classes")):
            _check_voc_when_loading(name, meta.dirname, meta.split, list(meta.thing_classes))
        elif name.startswith("coco_") and "panoptic" not in name and "keypoint" not in name \
                and meta.get("json_file", None) and meta.get("image_root", None):
            _check_coco_when_loading(name, meta.json_file, meta.image_root)


def unregister(name: str) -> None:
    """Take ``name`` out of Detectron2's DatasetCatalog and MetadataCatalog (where it is)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
