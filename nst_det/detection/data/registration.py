"""What every registration of nst_det's data sets shares (the demo set, the config's
``DATASETS.VOC_CUSTOM``, the folders ``tools/eval_predictions.py`` evaluates against): a folder in
PASCAL VOC layout registered with its evaluator type, and a name taken out of Detectron2's
catalogs. COCO sets need neither: Detectron2's ``register_coco_instances`` sets
``evaluator_type="coco"`` itself."""
from typing import Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_pascal_voc

__all__ = ["register_voc", "unregister"]


def register_voc(name: str, dirname: str, split: str, year: int, class_names: Sequence[str],
                 **metadata) -> None:
    """Detectron2's ``register_pascal_voc(name, dirname, split, year, class_names)``, with the
    metadata ``evaluator_type="pascal_voc"`` (which Detectron2 adds only to its built-in VOC sets)
    and ``metadata``."""
    register_pascal_voc(name, dirname, split, year, list(class_names))
    MetadataCatalog.get(name).set(evaluator_type="pascal_voc", **metadata)


def unregister(name: str) -> None:
    """Take ``name`` out of Detectron2's DatasetCatalog and MetadataCatalog (where it is)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
