"""Reading detection configs: Detectron2's defaults + nst_det's keys + a yaml + command-line
overrides, file paths relative to the yaml that names them, distillation settings checked; the
teacher's config; the plain student's config."""
import argparse
import os
from typing import Callable, Optional, Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from nst_det.engine.config_paths import (check_config_stage, missing_path_message,
                                         resolve_config_paths, yaml_chain)
from nst_det.engine.distill_config import check_distill_config, check_renamed_keys

from .architectures import DISTILL_META_ARCHITECTURES, NUM_CLASSES_KEYS, num_classes_key
from .config import add_nst_config
from .data.custom import CUSTOM_PATH_ENTRIES, check_custom_datasets, register_custom_datasets

__all__ = ["get_nst_cfg", "load_nst_cfg", "load_teacher_cfg", "is_lazy_config", "student_cfg",
           "distills", "add_config_file_arguments", "config_from_arguments",
           "model_zoo_config_file", "num_classes_key", "check_max_iter", "DISTILL_META_ARCHITECTURES",
           "MODEL_ZOO_PREFIX", "NUM_CLASSES_KEYS", "PATH_KEYS"]

# Marks a config of Detectron2's model zoo (DISTILL.TEACHER.CONFIG), never read as a local path.
MODEL_ZOO_PREFIX = "zoo://"
# Config keys that hold file paths: read relative to the yaml that names them.
PATH_KEYS = ("MODEL.WEIGHTS", "DISTILL.TEACHER.CONFIG", "DISTILL.TEACHER.WEIGHTS")


def get_nst_cfg() -> CN:
    """Detectron2's default config with nst_det's keys added."""
    return add_nst_config(get_cfg())


def load_nst_cfg(config_file: str, opts: Optional[Sequence[str]] = None, *,
                 classification_defaults: Optional[Callable[[], object]] = None) -> CN:
    """Defaults + nst_det's keys, then ``config_file`` (with its ``_BASE_`` chain), then ``opts``
    [KEY, VALUE, ...]; file paths read relative to the yaml that names them (``PATH_KEYS`` and
    the paths of ``DATASETS.COCO_CUSTOM`` / ``DATASETS.VOC_CUSTOM``); distillation settings
    checked (:func:`~nst_det.engine.distill_config.check_distill_config`); the data sets of those
    two keys registered in Detectron2's catalogs (:func:`register_custom_datasets`, idempotent);
    frozen. A key of an earlier version is a KeyError naming its new name.

    Before the merge, every yaml of the chain is read and checked
    (:func:`~nst_det.engine.config_paths.yaml_chain`: a ConfigFileError naming the file for an
    empty one, a yaml syntax error with its line, a key given twice in one mapping, a ``_BASE_``
    that is missing or loops; with ``classification_defaults`` (a function giving the
    classification stage's default config: the tools pass it, the library's two stages import
    nothing of each other), a classification config, naming tools/train_cls.py). After it,
    SOLVER.MAX_ITER < 1 is a ValueError naming the key."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file '{config_file}' does not exist")
    cfg = get_nst_cfg()
    if classification_defaults is not None:
        check_config_stage(yaml_chain(config_file), "detection", cfg, "classification",
                           classification_defaults)
    check_renamed_keys(config_file, opts)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    check_max_iter(cfg)
    if cfg.DATASETS.TEST_CLASS_MAP not in ("", "by_name"):
        raise ValueError(f"DATASETS.TEST_CLASS_MAP is {cfg.DATASETS.TEST_CLASS_MAP!r}: \"\" (test "
                         f"sets must list the training sets' classes in their order) or "
                         f"\"by_name\"")
    check_custom_datasets(cfg)
    resolve_config_paths(cfg, config_file, opts, PATH_KEYS, CUSTOM_PATH_ENTRIES)
    check_distill_config(cfg)
    cfg.freeze()
    register_custom_datasets(cfg)
    return cfg


def check_max_iter(cfg: CN) -> None:
    """ValueError naming SOLVER.MAX_ITER when it is not an integer >= 1 (0 or less trains nothing
    and would evaluate the initial weights as if they were the result)."""
    value = cfg.SOLVER.MAX_ITER
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"SOLVER.MAX_ITER is {value!r}: the number of training iterations must be "
                         f"an integer >= 1")


def add_config_file_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config-file FILE`` and trailing ``KEY VALUE`` overrides to the parser of a tool
    that reads data sets (the config registers those of ``DATASETS.COCO_CUSTOM`` /
    ``DATASETS.VOC_CUSTOM``); parse with ``parser.parse_intermixed_args``."""
    parser.add_argument("--config-file", metavar="FILE",
                        help="a detection config: registers its DATASETS.COCO_CUSTOM and "
                             "DATASETS.VOC_CUSTOM data sets first")
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE",
                        help="with --config-file: overrides of its keys, as in train_net.py")


def config_from_arguments(parser: argparse.ArgumentParser, args) -> Optional[CN]:
    """The config of ``--config-file`` and its overrides (:func:`load_nst_cfg`, which registers
    its data sets), or None without ``--config-file``."""
    if args.opts and not args.config_file:
        parser.error(f"KEY VALUE overrides ({' '.join(args.opts)}) go with --config-file")
    return load_nst_cfg(args.config_file, args.opts) if args.config_file else None


def distills(cfg: CN) -> bool:
    """True when ``cfg`` is a distillation config with a term on (DISTILL.NST.WEIGHT or
    DISTILL.KD.WEIGHT > 0): only then is a teacher built and its files needed."""
    d = cfg.DISTILL
    return cfg.MODEL.META_ARCHITECTURE in DISTILL_META_ARCHITECTURES and (
        d.NST.WEIGHT > 0 or d.KD.WEIGHT > 0)


def model_zoo_config_file(config_file: str, key: str) -> str:
    """The file of a config named ``zoo://<path in Detectron2's model zoo>`` (for example
    ``zoo://COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml``, resolved by
    ``detectron2.model_zoo.get_config_file``, nothing downloaded); any other value unchanged. An
    unknown name is a FileNotFoundError naming ``key`` and the value."""
    if not config_file.startswith(MODEL_ZOO_PREFIX):
        return config_file
    from detectron2 import model_zoo

    name = config_file[len(MODEL_ZOO_PREFIX):]
    try:
        return model_zoo.get_config_file(name)
    except RuntimeError as e:
        raise FileNotFoundError(f"{key} '{config_file}': Detectron2's model zoo has no config "
                                f"'{name}' ({e})") from e


def is_lazy_config(config_file: str) -> bool:
    """True when ``config_file`` (DISTILL.TEACHER.CONFIG) names a LazyConfig ``.py`` file (local or
    ``zoo://``), read with ``LazyConfig.load``, not as a yaml."""
    return config_file.endswith(".py")


def load_teacher_cfg(config_file: str, device: Optional[str] = None,
                     key: str = "DISTILL.TEACHER.CONFIG") -> CN:
    """The frozen config of a teacher detector read from ``config_file``
    (DISTILL.TEACHER.CONFIG: a local yaml, or ``zoo://`` + a yaml of Detectron2's model zoo), on
    ``device`` (the student's MODEL.DEVICE) when given; ``key`` names the setting in messages."""
    if not config_file:
        raise ValueError(
            f"{key} is empty: a distilling detector needs the teacher detector's config file "
            "(e.g. configs/voc_frcnn_R101_teacher.yaml) when a distillation weight is > 0."
        )
    if is_lazy_config(config_file):
        raise ValueError(f"{key} '{config_file}' is a LazyConfig file, not a yaml: its teacher is "
                         "built by nst_det.detection.teacher.build_lazy_teacher")
    config_file = model_zoo_config_file(config_file, key)
    if not os.path.isfile(config_file):
        raise FileNotFoundError(missing_path_message(key, config_file, what="teacher config file"))
    check_renamed_keys(config_file)
    cfg = get_nst_cfg()
    cfg.merge_from_file(config_file)
    if device is not None:
        cfg.MODEL.DEVICE = device  # the teacher lives where the student lives
    cfg.freeze()
    return cfg


def student_cfg(cfg: CN) -> CN:
    """A frozen copy of ``cfg`` that builds the student alone (its plain detector, e.g.
    GeneralizedRCNN for DistillGeneralizedRCNN; no teacher): for evaluation, visualisation and
    export of a distilled model."""
    cfg = cfg.clone()
    cfg.defrost()
    arch = cfg.MODEL.META_ARCHITECTURE
    cfg.MODEL.META_ARCHITECTURE = DISTILL_META_ARCHITECTURES.get(arch, arch)
    cfg.freeze()
    return cfg
