"""Train and test loaders of nst_det: Detectron2's, with RobustDatasetMapper, an error that names
an empty data set (Detectron2 asserts instead), and a train loader that --resume can continue."""
import itertools
from typing import Sequence

from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.build import _train_loader_from_config
import torch
from detectron2.utils import comm
from torch.utils.data import Sampler

from ..architectures import num_classes, num_classes_key
from .checked import check_dataset_dicts
from .robust_mapper import RobustDatasetMapper

__all__ = ["detection_dataset_dicts", "check_num_classes", "build_train_loader",
           "build_test_loader", "ResumableTrainLoader"]


class _StartableSampler(Sampler):
    """One of Detectron2's infinite training samplers, its stream begun ``start`` indices in."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.start = 0

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.start, None)


class ResumableTrainLoader:
    """Detectron2's train loader whose index stream can begin at a given iteration.

    ``start_at(k)`` skips the k x (images per process) indices that iterations 0..k-1 used, so
    after --resume the data continue where the checkpoint left them (exactly when every image
    falls in one aspect-ratio group or DATALOADER.ASPECT_RATIO_GROUPING is off; otherwise the few
    images waiting in the groups at the checkpoint are not replayed)."""

    def __init__(self, loader, sampler: _StartableSampler, images_per_process: int):
        self.loader = loader
        self.sampler = sampler
        self.images_per_process = images_per_process

    def __iter__(self):
        # A generator: nothing happens until the first batch is asked for, so start_at() called
        # after the trainer took iter(self) still applies.
        torch_state = torch.get_rng_state()
        batches = iter(self.loader)
        first = next(batches)
        # Making the loader's worker iterator (inside the first next()) draws one number from
        # torch's generator. Put it back: the stream's start then leaves the random state alone,
        # in an uninterrupted run (at iteration 0) as after --resume (at the checkpoint's).
        torch.set_rng_state(torch_state)
        yield first
        yield from batches

    def start_at(self, iteration: int) -> None:
        """Begin the next ``iter(self)`` at ``iteration``."""
        self.sampler.start = iteration * self.images_per_process


def detection_dataset_dicts(names: Sequence[str], key: str, evaluation: bool = False,
                            **kwargs) -> list:
    """``get_detection_dataset_dicts(names, **kwargs)``; an empty data set, or one left without an
    annotated image, is a ValueError naming it and the config ``key`` that lists it; then the
    checks of nst_det.detection.data.checked.check_dataset_dicts (``evaluation``: boxes of zero
    size refused rather than dropped)."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError(f"{key} is empty: name at least one registered data set")
    try:
        dicts = get_detection_dataset_dicts(names, **kwargs)
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
    return check_dataset_dicts(dicts, names, evaluation)


def check_num_classes(cfg, names: Sequence[str], key: str) -> None:
    """A ValueError when the detector's number of classes differs from a data set's (its
    ``thing_classes``, known once the data set is loaded), naming both and the keys."""
    num_key, count = num_classes_key(cfg), num_classes(cfg)
    for name in [names] if isinstance(names, str) else names:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != count:
            raise ValueError(
                f"{num_key} is {count} but data set '{name}' ({key}) has {len(classes)} classes "
                f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}): set {num_key} "
                f"{len(classes)}")


def build_train_loader(cfg) -> ResumableTrainLoader:
    """Detectron2's train loader on DATASETS.TRAIN with RobustDatasetMapper, resumable."""
    dataset = detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        "DATASETS.TRAIN",
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
        if cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    check_num_classes(cfg, cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
    mapper = RobustDatasetMapper(cfg, True, dataset_size=len(dataset))
    # Detectron2's choice of sampler (DATALOADER.SAMPLER_TRAIN), made startable for --resume.
    kwargs = _train_loader_from_config(cfg, mapper=mapper, dataset=dataset)
    sampler = kwargs["sampler"] = _StartableSampler(kwargs["sampler"])
    loader = build_detection_train_loader(**kwargs)
    return ResumableTrainLoader(loader, sampler, cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())


def build_test_loader(cfg, dataset_name: str):
    """Detectron2's test loader on ``dataset_name`` with RobustDatasetMapper (no image skipped)."""
    proposal_files = None
    if cfg.MODEL.LOAD_PROPOSALS:
        proposal_files = [cfg.DATASETS.PROPOSAL_FILES_TEST[list(cfg.DATASETS.TEST).index(dataset_name)]]
    dataset = detection_dataset_dicts([dataset_name], "DATASETS.TEST", evaluation=True,
                                      filter_empty=False,
                                      proposal_files=proposal_files)
    check_num_classes(cfg, [dataset_name], "DATASETS.TEST")
    return build_detection_test_loader(dataset, mapper=RobustDatasetMapper(cfg, False),
                                       num_workers=cfg.DATALOADER.NUM_WORKERS)
