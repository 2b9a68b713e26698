"""Evaluate a saved COCO-format predictions file against a data set, without a model.

The file is a JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``, as
Detectron2's COCO evaluator writes it (``inference/<data set>/coco_instances_results.json``):
image ids and category ids as in the data set's COCO form (its JSON, or Detectron2's conversion
of it: VOC file ids, which are strings, and contiguous class ids for VOC sets).

The data set is a registered one, or one registered here under a private name from a COCO
ground-truth JSON (``register_coco_ground_truth``) or a folder in PASCAL VOC layout
(``register_voc_folder``); ``predictions_dataset`` picks one of the three.

Every entry is checked before anything is evaluated (``check_predictions``): a bad entry is an
error naming the file, the entry's index and image id, the field and its value, never a score.
"""
import contextlib
import hashlib
import inspect
import io
import json
import logging
import math
import os
import tempfile
from collections import OrderedDict, defaultdict
from typing import Iterable, List, Optional, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASS_NAMES
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.checked import check_dataset_dicts
from ..data.registration import register_coco, register_voc, unregister
from .evaluators import coco_summary, voc_metrics

__all__ = ["load_coco_predictions", "check_predictions", "dataset_metadata", "dataset_description",
           "contiguous_class_id", "register_coco_ground_truth", "register_voc_folder",
           "predictions_dataset", "evaluate_predictions_voc", "evaluate_predictions_coco",
           "evaluate_predictions_file"]

_REQUIRED_KEYS = ("image_id", "category_id", "bbox", "score")

logger = logging.getLogger(__name__)

# pycocotools' own COCOeval (not Detectron2's faster, unofficial one) in Detectron2's
# _evaluate_predictions_on_coco: chosen by `cocoeval_fn` on Detectron2's main, by
# `use_fast_impl` on v0.6.
_OFFICIAL_COCOEVAL = (
    {"cocoeval_fn": COCOeval}
    if "cocoeval_fn" in inspect.signature(_evaluate_predictions_on_coco).parameters
    else {"use_fast_impl": False})


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ids_text(ids: set, kind: str) -> str:
    """How a message lists a data set's ids: their type and the first ones, or all of them."""
    if not ids:
        return f"it has no {kind}s"
    try:
        ordered = sorted(ids)
    except TypeError:  # ids of mixed types
        ordered = sorted(ids, key=repr)
    types_ = "/".join(sorted({type(i).__name__ for i in ids}))
    if kind == "image":
        return f"its image ids are {types_}, e.g. {ordered[:3]}"
    if len(ordered) > 5 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"its category ids: {ordered[0]}..{ordered[-1]}"
    return f"its category ids: {ordered}"


def _entry_problem(entry, image_ids=None, category_ids=None, description="", ids_text=None):
    """(exception type, text) of what is wrong with one prediction, or None."""
    if not isinstance(entry, dict):
        return ValueError, (f"is {type(entry).__name__} {entry!r}, expected an object with keys "
                            f"{list(_REQUIRED_KEYS)}")
    missing = [k for k in _REQUIRED_KEYS if k not in entry]
    if missing:
        return KeyError, f"lacks {missing} (needs {list(_REQUIRED_KEYS)})"
    image_id, category_id, bbox, score = (entry[k] for k in _REQUIRED_KEYS)
    if not (_is_int(image_id) or isinstance(image_id, str)):
        return ValueError, f"has image_id {image_id!r}: expected an integer or a string"
    if not _is_int(category_id):
        return ValueError, f"has category_id {category_id!r}: expected an integer"
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return ValueError, f"has bbox {bbox!r}: expected 4 numbers [x, y, w, h]"
    if not all(math.isfinite(v) for v in bbox):
        return ValueError, f"has bbox {bbox!r}: not finite"
    if bbox[2] <= 0 or bbox[3] <= 0:
        return ValueError, f"has bbox {bbox!r}: width and height must be > 0"
    if not _is_number(score):
        return ValueError, f"has score {score!r}: expected a number"
    if not math.isfinite(score):
        return ValueError, f"has score {score!r}: not finite"
    if image_ids is not None and image_id not in image_ids:
        return ValueError, (f"has image_id {image_id!r}, which is not an image of {description}; "
                            f"{ids_text['image']}")
    if category_ids is not None and category_id not in category_ids:
        return ValueError, (f"has category_id {category_id}, which is not a category of "
                            f"{description}; {ids_text['category']}")
    return None


def check_predictions(predictions, path: Optional[str] = None,
                      image_ids: Optional[Iterable] = None,
                      category_ids: Optional[Iterable[int]] = None,
                      dataset_name: Optional[str] = None) -> None:
    """Check every entry of COCO-format ``predictions``: the keys, an integer or string
    ``image_id``, an integer ``category_id``, a finite ``bbox`` of 4 numbers with width and height
    > 0, a finite ``score``; and, when given, the data set's ``image_ids`` (compared with their
    type: COCO ids are ints, VOC file ids strings) and ``category_ids``. Raises at the first bad
    entry, naming the file ``path``, the entry's index and image id, the field and its value (and
    how many more entries are bad)."""
    source = f"predictions file '{path}'" if path is not None else "predictions"
    if not isinstance(predictions, list):
        raise ValueError(f"{source} must be a JSON list of detections, found "
                         f"{type(predictions).__name__}")
    if not predictions:
        raise ValueError(f"{source} is an empty list: it holds no detections")
    image_ids = set(image_ids) if image_ids is not None else None
    category_ids = set(category_ids) if category_ids is not None else None
    description = dataset_description(dataset_name) if dataset_name is not None else "the data set"
    ids_text = {"image": _ids_text(image_ids, "image") if image_ids is not None else None,
                "category": _ids_text(category_ids, "category") if category_ids is not None
                else None}
    first, num_bad = None, 0
    for i, entry in enumerate(predictions):
        problem = _entry_problem(entry, image_ids, category_ids, description, ids_text)
        if problem is None:
            continue
        num_bad += 1
        if first is None:
            where = f"entry {i}"
            if isinstance(entry, dict) and "image_id" in entry:
                where += f" (image_id {entry['image_id']!r})"
            first = (problem[0], f"{source}: {where} {problem[1]}")
    if first is not None:
        error, text = first
        if num_bad > 1:
            text += f" ({num_bad - 1} more bad entries of {len(predictions)})"
        raise error(text)
    _warn_duplicates(predictions, source)


def _warn_duplicates(predictions: List[dict], source: str) -> int:
    """Warn (with their count and the first one) about entries that repeat an earlier one
    exactly: each counts as one more detection, a false positive (a file with every entry twice
    scores about half the AP). Returns their count."""
    seen, repeats, first = set(), 0, None
    for i, p in enumerate(predictions):
        key = (p["image_id"], p["category_id"], tuple(p["bbox"]), p["score"])
        if key in seen:
            repeats += 1
            if first is None:
                first = f"entry {i} (image_id {p['image_id']!r})"
        seen.add(key)
    if repeats:
        logger.warning(f"{source}: {repeats} of {len(predictions)} entries repeat an earlier entry "
                       f"exactly (same image_id, category_id, bbox and score; the first: {first}); "
                       f"each counts as one more detection, a false positive that lowers AP: "
                       f"remove the repeats")
    return repeats


def _read_json(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"predictions file '{path}' does not exist")
    with open(path) as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"predictions file '{path}' is not valid JSON: {e}") from e


def load_coco_predictions(path: str) -> List[dict]:
    """The predictions of a COCO-format results file, each entry checked (``check_predictions``,
    without the data set)."""
    predictions = _read_json(path)
    check_predictions(predictions, path)
    return predictions


def dataset_metadata(dataset_name: str):
    """Metadata of a registered data set, with its ``thing_classes`` (a COCO JSON registered by
    ``register_coco_instances`` knows them once loaded: it is loaded here then); KeyError listing
    the registered ones otherwise."""
    if dataset_name not in DatasetCatalog.list():
        raise KeyError(f"data set '{dataset_name}' is not registered; registered: "
                       f"{sorted(DatasetCatalog.list())}")
    meta = MetadataCatalog.get(dataset_name)
    if meta.get("thing_classes", None) is None:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' prints
            DatasetCatalog.get(dataset_name)
    return meta


def dataset_description(dataset_name: str) -> str:
    """How messages name ``dataset_name``: "data set 'NAME'", or the files of a set registered by
    ``register_coco_ground_truth`` / ``register_voc_folder``."""
    description = MetadataCatalog.get(dataset_name).get("description", None)
    return description or f"data set '{dataset_name}'"


def _private_name(kind: str, *key) -> str:
    digest = hashlib.sha1(repr(key).encode()).hexdigest()[:12]
    name = f"_eval_predictions_{kind}_{digest}"
    unregister(name)  # registered again: the files may have changed
    return name


def register_coco_ground_truth(json_file: str, image_root: Optional[str] = None) -> str:
    """Register a COCO instances JSON with Detectron2's ``register_coco_instances`` under a
    private name (returned) and load it once (its classes and category ids then are in the
    metadata). ``image_root``: the images' folder, default the JSON's (the images are not read)."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"ground-truth file '{json_file}' (--gt) does not exist")
    if image_root is None:
        image_root = os.path.dirname(json_file)
    elif not os.path.isdir(image_root):
        raise FileNotFoundError(f"image root '{image_root}' (--image-root) is not a directory")
    name = _private_name("coco", os.path.abspath(json_file), os.path.abspath(image_root))
    register_coco(name, {"description": f"ground truth '{json_file}' (--gt)"}, json_file,
                  image_root)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            DatasetCatalog.get(name)
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        unregister(name)
        if str(e).startswith("COCO annotation file "):  # nst_det.detection.data.checked
            raise ValueError(f"{e} (--gt)") from e
        raise ValueError(f"ground-truth file '{json_file}' (--gt) is not a COCO instances JSON: "
                         f"{type(e).__name__}: {e}") from e
    return name


def register_voc_folder(dirname: str, split: str = "test", year: Optional[int] = None,
                        class_names: Optional[Union[str, Sequence[str]]] = None) -> str:
    """Register a folder in PASCAL VOC layout (``Annotations/``, ``ImageSets/Main/<split>.txt``,
    ``JPEGImages/``) with Detectron2's ``register_pascal_voc`` under a private name (returned),
    evaluated by the VOC evaluator. ``year``: 2007 (the 11-point metric) when the folder's name
    says VOC2007, else 2012. ``class_names``: the 20 VOC classes, or names (or "a,b,c")."""
    if not os.path.isdir(dirname):
        raise FileNotFoundError(f"VOC folder '{dirname}' (--voc-root) is not a directory")
    image_set = os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(image_set):
        raise FileNotFoundError(f"VOC image set '{image_set}' (--voc-root, --split {split}) "
                                "does not exist")
    if year is None:
        year = 2007 if "VOC2007" in os.path.basename(os.path.normpath(dirname)).upper() else 2012
    if class_names is None:
        class_names = list(VOC_CLASS_NAMES)
    elif isinstance(class_names, str):
        class_names = [c.strip() for c in class_names.split(",")]
    class_names = list(class_names)
    if not class_names or not all(class_names) or len(set(class_names)) != len(class_names):
        raise ValueError(f"--classes must name distinct, non-empty classes, got {class_names}")
    name = _private_name("voc", os.path.abspath(dirname), split, int(year), class_names)
    register_voc(name, dirname, split, int(year), class_names,
                 description=f"VOC folder '{dirname}' split '{split}' (--voc-root)")
    try:
        DatasetCatalog.get(name)  # every listed annotation checked, known classes
    except ValueError as e:
        unregister(name)
        if "is not one of the data set's classes" not in str(e):
            raise
        raise ValueError(f"{e} (--voc-root '{dirname}'); give the classes with --classes "
                         "a,b,c") from e
    return name


def predictions_dataset(dataset: Optional[str] = None, gt: Optional[str] = None,
                        voc_root: Optional[str] = None, image_root: Optional[str] = None,
                        split: Optional[str] = None, year: Optional[int] = None,
                        classes: Optional[Union[str, Sequence[str]]] = None) -> str:
    """The name of the data set to evaluate against, from exactly one of: ``dataset`` (a
    registered name), ``gt`` (a COCO JSON, with ``image_root``) or ``voc_root`` (a VOC-layout
    folder, with ``split`` (default "test"), ``year`` and ``classes``)."""
    given = [opt for opt, value in (("--dataset", dataset), ("--gt", gt), ("--voc-root", voc_root))
             if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of --dataset, --gt, --voc-root; got "
                         f"{', '.join(given) if given else 'none'}")
    if image_root is not None and gt is None:
        raise ValueError("--image-root goes with --gt")
    extra = [opt for opt, value in (("--split", split), ("--year", year), ("--classes", classes))
             if value is not None]
    if extra and voc_root is None:
        raise ValueError(f"{', '.join(extra)} {'goes' if len(extra) == 1 else 'go'} with "
                         "--voc-root")
    if dataset is not None:
        dataset_metadata(dataset)
        name = dataset
    elif gt is not None:
        name = register_coco_ground_truth(gt, image_root)
    else:
        name = register_voc_folder(voc_root, split or "test", year, classes)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' prints
        check_dataset_dicts(DatasetCatalog.get(name), [dataset_description(name)], evaluation=True)
    return name


def contiguous_class_id(meta, category_id: int) -> int:
    """The model's class index (0..K-1) of a predictions file's ``category_id``."""
    mapping = meta.get("thing_dataset_id_to_contiguous_id", None)
    if mapping is None:
        contiguous = int(category_id)
    elif category_id in mapping:
        contiguous = mapping[category_id]
    else:
        raise ValueError(f"prediction has category_id {category_id}, not one of the data set's "
                         f"{sorted(mapping)}")
    if not 0 <= contiguous < len(meta.thing_classes):
        raise ValueError(f"prediction has category_id {category_id} but the data set has "
                         f"{len(meta.thing_classes)} classes")
    return contiguous


def evaluate_predictions_voc(predictions: List[dict], dataset_name: str,
                             path: Optional[str] = None) -> "OrderedDict[str, float]":
    """VOC metrics (``voc_metrics``) of COCO-format predictions on a VOC-layout data set; every
    entry is checked first (``check_predictions``; ``path``: the file, for the messages)."""
    meta = dataset_metadata(dataset_name)
    for key in ("dirname", "split", "year"):
        if not meta.get(key, None):
            raise ValueError(f"{dataset_description(dataset_name)} is not in VOC layout (metadata "
                             f"lacks '{key}'); evaluate it with the COCO metric")
    image_set = os.path.join(meta.dirname, "ImageSets", "Main", f"{meta.split}.txt")
    if not os.path.isfile(image_set):
        raise FileNotFoundError(f"VOC image set '{image_set}' of "
                                f"{dataset_description(dataset_name)} does not exist")
    with open(image_set) as f:
        image_ids = {line.strip() for line in f if line.strip()}
    mapping = meta.get("thing_dataset_id_to_contiguous_id", None)
    category_ids = sorted(mapping) if mapping else range(len(meta.thing_classes))
    check_predictions(predictions, path, image_ids, category_ids, dataset_name)
    lines = defaultdict(list)
    for p in predictions:
        x, y, w, h = p["bbox"]
        # the VOC devkit's 1-based corners, as Detectron2's VOC evaluator writes them
        lines[contiguous_class_id(meta, p["category_id"])].append(
            f"{p['image_id']} {p['score']:.3f} {x + 1:.1f} {y + 1:.1f} {x + w:.1f} {y + h:.1f}")
    anno_template = os.path.join(meta.dirname, "Annotations", "{}.xml")
    return voc_metrics(lines, anno_template, image_set, meta.thing_classes, meta.year == 2007)


def evaluate_predictions_coco(predictions: List[dict], dataset_name: str,
                              cache_dir: Optional[str] = None, path: Optional[str] = None
                              ) -> "OrderedDict[str, float]":
    """The 12 COCO numbers and AP per class of COCO-format predictions (pycocotools' COCOeval);
    every entry is checked first (``check_predictions``; ``path``: the file, for the messages)."""
    meta = dataset_metadata(dataset_name)
    with tempfile.TemporaryDirectory(prefix="nst_det_coco_gt_") as tmp:
        json_file = meta.get("json_file", None)
        if json_file is None:  # e.g. a VOC set: Detectron2's conversion to COCO form
            json_file = os.path.join(cache_dir or tmp, f"{dataset_name}_coco_format.json")
            convert_to_coco_json(dataset_name, json_file, allow_cached=cache_dir is not None)
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(json_file)
    check_predictions(predictions, path, coco_gt.getImgIds(), coco_gt.getCatIds(), dataset_name)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' prints
        coco_eval = _evaluate_predictions_on_coco(coco_gt, predictions, "bbox",
                                                  **_OFFICIAL_COCOEVAL)
    return coco_summary(coco_eval, meta.thing_classes)


def evaluate_predictions_file(path: str, dataset_name: str, metric: str = "auto"
                              ) -> "OrderedDict[str, OrderedDict]":
    """{"bbox": metrics} of the predictions file ``path`` on ``dataset_name``; ``metric`` is
    "voc", "coco" or "auto" (the data set's ``evaluator_type``). Every entry is checked against
    the data set before anything is evaluated."""
    meta = dataset_metadata(dataset_name)
    if metric == "auto":
        metric = {"pascal_voc": "voc", "coco": "coco"}.get(meta.get("evaluator_type", None), "coco")
    if metric not in ("voc", "coco"):
        raise ValueError(f"metric must be 'voc', 'coco' or 'auto', got {metric!r}")
    predictions = _read_json(path)  # checked entry by entry with the data set, before evaluating
    if metric == "voc":
        results = evaluate_predictions_voc(predictions, dataset_name, path=path)
    else:
        results = evaluate_predictions_coco(predictions, dataset_name, path=path)
    return OrderedDict(bbox=results)
