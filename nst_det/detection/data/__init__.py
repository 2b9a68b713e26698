"""Detection data of nst_det: the generated demo set (VOC layout + COCO JSON), registered in
Detectron2's catalogs on import under ``$DETECTRON2_DATASETS/demo_det``, and writers of tiny data
sets in the official VOC, COCO and ImageNet layouts (:mod:`nst_det.detection.data.official_layout`)."""
from .demo_datasets import demo_dataset_names, demo_root, register_demo_datasets  # noqa: F401
from .demo_generator import CLASS_NAMES, demo_data_exists, generate_demo_data  # noqa: F401
from .official_layout import write_coco, write_imagenet, write_voc  # noqa: F401
from .build import build_test_loader, build_train_loader, detection_dataset_dicts  # noqa: F401
from .robust_mapper import RobustDatasetMapper  # noqa: F401

register_demo_datasets()
