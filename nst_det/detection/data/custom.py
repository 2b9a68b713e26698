"""Your own detection data sets, registered from config keys (no Python needed).

``DATASETS.COCO_CUSTOM`` lists COCO-format sets (an instances JSON and its image folder) and
``DATASETS.VOC_CUSTOM`` sets in PASCAL VOC layout (``Annotations/``, ``JPEGImages/``,
``ImageSets/Main/<split>.txt``); :func:`register_custom_datasets` registers each one with
Detectron2's own ``register_coco_instances`` / ``register_pascal_voc`` under its NAME, which
``DATASETS.TRAIN`` / ``DATASETS.TEST`` then name. The evaluator follows from the registration
(``evaluator_type`` "coco" / "pascal_voc"). :func:`nst_det.detection.load_config.load_nst_cfg`
registers them, so every tool that reads a config does, in every process of a job.

Registering the same definition again (a config loaded twice, or by every process) does nothing;
a NAME already registered with another definition is an error naming it.
"""
import os
from typing import Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog

from nst_det.engine.config_paths import missing_path_message

from .registration import register_coco, register_voc

__all__ = ["COCO_CUSTOM_KEY", "VOC_CUSTOM_KEY", "CUSTOM_PATH_ENTRIES",
           "add_custom_datasets_config", "check_custom_datasets", "register_custom_datasets"]

COCO_CUSTOM_KEY = "DATASETS.COCO_CUSTOM"
VOC_CUSTOM_KEY = "DATASETS.VOC_CUSTOM"
_FIELDS = {COCO_CUSTOM_KEY: ("NAME", "JSON_FILE", "IMAGE_ROOT"),
           VOC_CUSTOM_KEY: ("NAME", "DIRNAME", "SPLIT", "YEAR", "CLASSES")}
# Positions of the file paths in each entry: read relative to the yaml that sets the key
# (nst_det.engine.config_paths.resolve_config_paths).
CUSTOM_PATH_ENTRIES = {COCO_CUSTOM_KEY: (1, 2), VOC_CUSTOM_KEY: (1,)}
# Metadata keys that hold paths (compared as absolute paths).
_PATH_METADATA = ("json_file", "image_root", "dirname")


def add_custom_datasets_config(cfg):
    """Add the keys of data sets registered from the config (``DATASETS.COCO_CUSTOM``,
    ``DATASETS.VOC_CUSTOM``) to ``cfg``."""
    _C = cfg
    # COCO-format data sets to register, each [NAME, JSON_FILE, IMAGE_ROOT] (an instances JSON
    # and the folder its file_names are relative to), e.g.
    # [["my_train", "my_data/train.json", "my_data/images"]]; evaluated by the COCO evaluator.
    _C.DATASETS.COCO_CUSTOM = []
    # PASCAL VOC-layout data sets to register, each [NAME, DIRNAME, SPLIT, YEAR, CLASSES]:
    # DIRNAME holds Annotations/, JPEGImages/ and ImageSets/Main/<SPLIT>.txt; YEAR 2007 is
    # evaluated with the 11-point AP metric, any other year with the area one; CLASSES the class
    # names in the model's order, "a,b,c" (or a list), e.g. [["my_test", "VOCmine", "test",
    # 2012, "cat,dog"]].
    _C.DATASETS.VOC_CUSTOM = []
    return _C


def _label(key: str, index: int) -> str:
    return f"{key}[{index}]"


def _entry(key: str, index: int, entry) -> list:
    """``entry`` as a list, after checking its length and that NAME and the paths are non-empty
    strings; a ValueError naming the key and the entry otherwise."""
    fields = _FIELDS[key]
    form = "[" + ", ".join(fields) + "]"
    if not isinstance(entry, (list, tuple)) or len(entry) != len(fields):
        raise ValueError(f"{_label(key, index)} is {entry!r}: each entry of {key} is {form}")
    entry = list(entry)
    for position, field in enumerate(fields):
        if field in ("YEAR", "CLASSES"):
            continue
        if not isinstance(entry[position], str) or not entry[position].strip():
            raise ValueError(f"{_label(key, index)} is {entry!r}: {field} must be a non-empty "
                             f"string (each entry of {key} is {form})")
    return entry


def _year(key: str, index: int, entry: list) -> int:
    year = entry[3]
    if isinstance(year, str) and year.strip().isdigit():
        return int(year)
    if isinstance(year, int) and not isinstance(year, bool):
        return year
    raise ValueError(f"{_label(key, index)} is {entry!r}: YEAR must be an integer such as 2007 "
                     f"(11-point AP) or 2012 (area AP), got {year!r}")


def _class_names(key: str, index: int, entry: list) -> List[str]:
    classes = entry[4]
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",")]
    if (not isinstance(classes, (list, tuple)) or not classes
            or not all(isinstance(c, str) and c.strip() for c in classes)
            or len(set(classes)) != len(classes)):
        raise ValueError(f"{_label(key, index)} is {entry!r}: CLASSES must name distinct, "
                         f"non-empty classes, \"a,b,c\" or a list, got {entry[4]!r}")
    return [c.strip() for c in classes]


def _require(exists: bool, key: str, index: int, name: str, path: str, what: str) -> None:
    if not exists:
        raise FileNotFoundError(
            f"data set '{name}': {missing_path_message(_label(key, index), path, what)}")


def _normalised(metadata: Dict) -> Dict:
    return {k: os.path.abspath(v) if k in _PATH_METADATA and isinstance(v, str) else v
            for k, v in metadata.items()}


def _already_registered(name: str, definition: Dict, where: str) -> bool:
    """True when ``name`` is registered with ``definition`` (metadata); False when it is free; a
    ValueError naming it when it is registered (or has metadata) otherwise."""
    known = name in DatasetCatalog.list()
    if not known and name not in MetadataCatalog.list():
        return False
    metadata = MetadataCatalog.get(name)
    present = _normalised({k: metadata.get(k) for k in definition if metadata.get(k) is not None})
    wanted = _normalised(definition)
    differing = {k: v for k, v in present.items() if v != wanted[k]}
    if not differing and (not known or present == wanted):
        return known
    shown = differing or {k: metadata.get(k) for k in definition}
    raise ValueError(
        f"{where}: data set '{name}' is already registered with a different definition "
        f"({', '.join(f'{k}={v!r}' for k, v in shown.items())}, not "
        f"{', '.join(f'{k}={wanted[k]!r}' for k in shown)}): give this entry another NAME")


def _parse(key: str, index: int, entry) -> list:
    """The fields of entry ``index`` of ``key``, checked (YEAR an int, CLASSES a list)."""
    entry = _entry(key, index, entry)
    if key == VOC_CUSTOM_KEY:
        entry[3:] = [_year(key, index, entry), _class_names(key, index, entry)]
    return entry


def _entries(cfg):
    """(key, index, fields) of every entry of both keys, each checked."""
    return [(key, i, _parse(key, i, entry)) for key in _FIELDS
            for i, entry in enumerate(cfg.DATASETS[key.split(".")[1]])]


def check_custom_datasets(cfg) -> None:
    """A ValueError naming the key and the entry for a malformed entry of
    ``DATASETS.COCO_CUSTOM`` / ``DATASETS.VOC_CUSTOM`` (before its paths are resolved, so that
    the message shows the entry as written)."""
    _entries(cfg)


def _register_coco(index: int, name: str, json_file: str, image_root: str) -> None:
    key = COCO_CUSTOM_KEY
    _require(os.path.isfile(json_file), key, index, name, json_file, "JSON_FILE")
    _require(os.path.isdir(image_root), key, index, name, image_root, "IMAGE_ROOT folder")
    definition = {"json_file": json_file, "image_root": image_root, "evaluator_type": "coco"}
    if not _already_registered(name, definition, _label(key, index)):
        register_coco(name, {}, os.path.abspath(json_file), os.path.abspath(image_root))


def _register_voc(index: int, name: str, dirname: str, split: str, year: int,
                  class_names: List[str]) -> None:
    key = VOC_CUSTOM_KEY
    _require(os.path.isdir(dirname), key, index, name, dirname, "DIRNAME folder")
    for sub, exists in (("Annotations", os.path.isdir), ("JPEGImages", os.path.isdir),
                        (os.path.join("ImageSets", "Main", f"{split}.txt"), os.path.isfile)):
        path = os.path.join(dirname, sub)
        if not exists(path):
            raise FileNotFoundError(
                f"data set '{name}' ({_label(key, index)}): VOC folder '{dirname}' has no "
                f"'{sub}' ({path} does not exist); the layout is Annotations/, JPEGImages/, "
                f"ImageSets/Main/<SPLIT>.txt")
    definition = {"dirname": dirname, "split": split, "year": year, "thing_classes": class_names,
                  "evaluator_type": "pascal_voc"}
    if not _already_registered(name, definition, _label(key, index)):
        register_voc(name, os.path.abspath(dirname), split, year, class_names)


_REGISTER = {COCO_CUSTOM_KEY: _register_coco, VOC_CUSTOM_KEY: _register_voc}


def register_custom_datasets(cfg) -> List[str]:
    """Register every entry of ``DATASETS.COCO_CUSTOM`` and ``DATASETS.VOC_CUSTOM`` of ``cfg``
    (paths already resolved by ``load_nst_cfg``) in Detectron2's catalogs; returns their names.

    A malformed entry is a ValueError naming the key and the entry; a missing file or folder a
    FileNotFoundError naming the key, the entry's NAME and the path (with the places tried); a
    NAME registered with another definition a ValueError naming it. The same definition again
    is no error (idempotent)."""
    entries = _entries(cfg)  # every entry checked before any is registered
    for key, index, fields in entries:
        _REGISTER[key](index, *fields)
    return [fields[0] for _, _, fields in entries]
