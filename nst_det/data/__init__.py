"""Detection data of nst_det: the generated demo set (VOC layout + COCO JSON), registered in
Detectron2's catalogs on import under ``$DETECTRON2_DATASETS/demo_det``."""
from .demo_datasets import (  # noqa: F401
    demo_dataset_names,
    demo_root,
    load_voc_detection,
    register_demo_datasets,
)
from .demo_generator import CLASS_NAMES, demo_data_exists, generate_demo_data  # noqa: F401
from .build import build_test_loader, build_train_loader, detection_dataset_dicts  # noqa: F401
from .robust_mapper import RobustDatasetMapper  # noqa: F401

register_demo_datasets()
