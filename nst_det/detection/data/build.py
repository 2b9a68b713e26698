"""Train and test loaders of nst_det: Detectron2's, with RobustDatasetMapper, an error that names
an empty data set (Detectron2 asserts instead), and a train loader that --resume can continue."""
import contextlib
import io
import itertools
from typing import List, Optional, Sequence

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

__all__ = ["detection_dataset_dicts", "check_num_classes", "dataset_classes",
           "check_class_lists", "class_map_for_test", "build_train_loader", "build_test_loader",
           "ResumableTrainLoader"]


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


def dataset_classes(name: str) -> Optional[List[str]]:
    """The ``thing_classes`` of the registered data set ``name``; a set that registers them
    lazily (a COCO JSON: when it is loaded) is loaded here first. None when it has none."""
    meta = MetadataCatalog.get(name)
    if meta.get("thing_classes", None) is None:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' prints
            DatasetCatalog.get(name)
    classes = meta.get("thing_classes", None)
    return list(classes) if classes is not None else None


def _classes_text(classes: Sequence[str], limit: int = 20) -> str:
    shown = list(classes[:limit])
    return f"{shown}" if len(classes) <= limit else f"{shown[:-1] + ['...']} ({len(classes)} in all)"


def class_map_for_test(cfg, test_name: str) -> Optional[List[int]]:
    """None when ``test_name`` lists the classes of DATASETS.TRAIN in the same order; with
    DATASETS.TEST_CLASS_MAP "by_name" and the same names in another order, the test set's class
    index of each of the model's classes; a ValueError naming both sets and both lists otherwise
    (the model's class ``i`` would be scored as the test set's class ``i``)."""
    train = [(n, dataset_classes(n)) for n in cfg.DATASETS.TRAIN]
    train = [(n, c) for n, c in train if c is not None]
    test = dataset_classes(test_name)
    if not train or test is None or train[0][1] == test:
        return None
    name, classes = train[0]
    by_name = cfg.DATASETS.TEST_CLASS_MAP == "by_name"
    if by_name and sorted(classes) == sorted(test) and len(set(test)) == len(test):
        return [test.index(c) for c in classes]
    first = next((i for i, (a, b) in enumerate(zip(classes, test)) if a != b),
                 min(len(classes), len(test)))
    where = (f"class {first} is '{classes[first]}' in one and '{test[first]}' in the other"
             if first < min(len(classes), len(test)) else
             f"they have {len(classes)} and {len(test)} classes")
    if by_name:
        hint = (f"DATASETS.TEST_CLASS_MAP by_name maps classes of the same names only; these "
                f"differ in content: only in '{name}': {sorted(set(classes) - set(test))}, only in "
                f"'{test_name}': {sorted(set(test) - set(classes))}")
    else:
        hint = ("Use a test set with the training set's classes in its order, or set "
                "DATASETS.TEST_CLASS_MAP by_name to map the classes by name (same names, another "
                "order)")
    raise ValueError(
        f"class lists differ: the model is trained on data set '{name}' (DATASETS.TRAIN), whose "
        f"thing_classes are {_classes_text(classes)}, but data set '{test_name}' "
        f"(DATASETS.TEST) has {_classes_text(test)} ({where}): its detections would be scored as "
        f"the wrong classes. {hint}")


def check_class_lists(cfg, test_names: Sequence[str]) -> None:
    """A ValueError naming both sets and both lists when the data sets of DATASETS.TRAIN do not
    all list the same ``thing_classes`` in the same order, or a set of ``test_names``
    (DATASETS.TEST) lists other classes than they do, or the same in another order (unless
    DATASETS.TEST_CLASS_MAP is "by_name": :func:`class_map_for_test`). Sets that register their
    classes lazily are loaded first."""
    train = [(n, dataset_classes(n)) for n in cfg.DATASETS.TRAIN]
    train = [(n, c) for n, c in train if c is not None]
    for name, classes in train[1:]:
        if classes != train[0][1]:
            raise ValueError(
                f"class lists differ between the training sets: data set '{train[0][0]}' "
                f"(DATASETS.TRAIN) has thing_classes {_classes_text(train[0][1])} but data set "
                f"'{name}' (DATASETS.TRAIN) has {_classes_text(classes)}: one model cannot learn "
                f"both; use sets with the same classes in the same order")
    for name in [test_names] if isinstance(test_names, str) else test_names:
        class_map_for_test(cfg, name)


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
    check_class_lists(cfg, [dataset_name])
    return build_detection_test_loader(dataset, mapper=RobustDatasetMapper(cfg, False),
                                       num_workers=cfg.DATALOADER.NUM_WORKERS)
