"""Train and test loaders of nst_det: Detectron2's, with RobustDatasetMapper and an error that
names an empty data set (Detectron2 asserts instead)."""
from typing import Sequence

from detectron2.data import (
    DatasetCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)

from .robust_mapper import RobustDatasetMapper

__all__ = ["detection_dataset_dicts", "build_train_loader", "build_test_loader"]


def detection_dataset_dicts(names: Sequence[str], key: str, **kwargs) -> list:
    """``get_detection_dataset_dicts(names, **kwargs)``; an empty data set, or one left without an
    annotated image, is a ValueError naming it and the config ``key`` that lists it."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError(f"{key} is empty: name at least one registered data set")
    try:
        return get_detection_dataset_dicts(names, **kwargs)
    except AssertionError as e:
        empty = [n for n in names if len(DatasetCatalog.get(n)) == 0]
        if empty:
            raise ValueError(
                f"data set(s) {empty} ({key}) have no images: check the files they are registered "
                "from (the demo set: python datasets/generate_demo_data.py)") from e
        if "No valid data" in str(e):
            raise ValueError(
                f"no image of {names} ({key}) has a (non-crowd) annotation, so none is left to "
                "train on (DATALOADER.FILTER_EMPTY_ANNOTATIONS removes such images)") from e
        raise


def build_train_loader(cfg):
    """Detectron2's train loader on DATASETS.TRAIN with RobustDatasetMapper."""
    dataset = detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        "DATASETS.TRAIN",
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
        if cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    mapper = RobustDatasetMapper(cfg, True, dataset_size=len(dataset))
    return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)


def build_test_loader(cfg, dataset_name: str):
    """Detectron2's test loader on ``dataset_name`` with RobustDatasetMapper (no image skipped)."""
    proposal_files = None
    if cfg.MODEL.LOAD_PROPOSALS:
        proposal_files = [cfg.DATASETS.PROPOSAL_FILES_TEST[list(cfg.DATASETS.TEST).index(dataset_name)]]
    dataset = detection_dataset_dicts([dataset_name], "DATASETS.TEST", filter_empty=False,
                                      proposal_files=proposal_files)
    return build_detection_test_loader(dataset, mapper=RobustDatasetMapper(cfg, False),
                                       num_workers=cfg.DATALOADER.NUM_WORKERS)
