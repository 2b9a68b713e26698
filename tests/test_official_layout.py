"""Tests of nst_det/detection/data/official_layout.py: tiny sets in the official VOC, COCO and ImageNet
layouts, read by Detectron2's OWN built-in data sets (``voc_2007_trainval``, ``coco_2017_val``,
...) and by nst_det's ImageNet reader, as a user's real downloads are.

Detectron2 registers its built-in sets from ``$DETECTRON2_DATASETS`` when ``detectron2.data`` is
first imported, so the loading runs in one subprocess (``official_env``, working directory outside
the repository) that reports everything as JSON; the tests below check parts of that report.
"""
import filecmp
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from nst_det.detection.data.official_layout import (
    SHAPE_CLASSES,
    coco_categories,
    voc_class_names,
    write_coco,
    write_imagenet,
    write_voc,
)

VOC_SETS = ("voc_2007_trainval", "voc_2007_train", "voc_2007_val", "voc_2007_test",
            "voc_2012_trainval")
COCO_SETS = ("coco_2017_train", "coco_2017_val")

_SCRIPT = r"""
import json, logging, sys

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from nst_det import _d2_compat
from nst_det.classification.data import build_imagenet_dataset, imagenet_root

messages = []


class Collect(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())


build_logger = logging.getLogger("detectron2.data.build")
build_logger.setLevel(logging.INFO)
build_logger.addHandler(Collect())

report = {"applied": list(_d2_compat.APPLIED), "sets": {}, "histograms": {}, "imagenet": {}}
for name in sys.argv[1].split(","):
    meta = MetadataCatalog.get(name)
    report["sets"][name] = {
        "records": DatasetCatalog.get(name),
        "thing_classes": meta.thing_classes,
        "evaluator_type": meta.evaluator_type,
        "id_map": {str(k): v for k, v in getattr(meta, "thing_dataset_id_to_contiguous_id",
                                                  {}).items()},
    }
for name in ("voc_2007_trainval", "coco_2017_train"):
    messages.clear()
    get_detection_dataset_dicts([name])
    report["histograms"][name] = "\n".join(messages)
for split in ("train", "val"):
    dataset = build_imagenet_dataset(imagenet_root(), train=split == "train")
    image, label = dataset[0]
    report["imagenet"][split] = {"classes": dataset.classes, "len": len(dataset),
                                 "shape": list(image.shape), "label": label}
print("REPORT " + json.dumps(report, default=int))
"""


@pytest.fixture(scope="module")
def report(official_datasets, official_env, tmp_path_factory):
    """What Detectron2's built-in sets and nst_det's ImageNet reader load from the official
    layouts, from a fresh process with ``DETECTRON2_DATASETS`` / ``NST_DATASETS`` set."""
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, ",".join(VOC_SETS + COCO_SETS)],
        cwd=str(tmp_path_factory.mktemp("cwd")), env=official_env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-4000:]
    return json.loads(lines[-1][len("REPORT "):])


def _voc_objects(dirname, file_id):
    tree = ET.parse(os.path.join(dirname, "Annotations", f"{file_id}.xml"))
    return [(o.findtext("name"), int(o.findtext("difficult")),
             [int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")])
            for o in tree.findall("object")]


def _split_ids(dirname, split):
    with open(os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")) as f:
        return f.read().split()


@pytest.mark.parametrize("name", VOC_SETS)
def test_detectron2_builtin_voc_sets_load(report, official_datasets, name):
    """Detectron2's own ``voc_<year>_<split>``: every listed image with its boxes, 1-based VOC
    corners moved to 0-based as ``load_voc_instances`` does, the 20 VOC classes.

    Without the numpy-alias fix: ``AttributeError: module 'numpy' has no attribute 'str'`` (the
    subprocess fails) -- Detectron2 v0.6 reads the split with ``np.loadtxt(f, dtype=np.str)``."""
    year, split = name.split("_")[1], name.split("_", 2)[2]
    if year == "2007":
        dirname, splits = official_datasets.voc2007, official_datasets.voc2007_splits
    else:
        dirname, splits = official_datasets.voc2012, official_datasets.voc2012_splits
    loaded = report["sets"][name]
    ids = _split_ids(dirname, split)
    expected = {"trainval": splits["trainval"], "train": (splits["trainval"] + 1) // 2,
                "val": splits["trainval"] // 2, "test": splits.get("test", 0)}[split]
    assert len(ids) == expected and len(loaded["records"]) == expected
    assert loaded["thing_classes"] == list(voc_class_names()) and len(loaded["thing_classes"]) == 20
    assert loaded["evaluator_type"] == "pascal_voc"
    for file_id, record in zip(ids, loaded["records"]):
        assert record["image_id"] == file_id
        assert record["file_name"] == os.path.join(dirname, "JPEGImages", f"{file_id}.jpg")
        assert os.path.isfile(record["file_name"])
        assert (record["height"], record["width"]) == (96, 128)
        objects = _voc_objects(dirname, file_id)
        assert len(record["annotations"]) == len(objects) >= 1
        for (cls, _, (x0, y0, x1, y1)), anno in zip(objects, record["annotations"]):
            assert loaded["thing_classes"][anno["category_id"]] == cls
            assert anno["bbox"] == [x0 - 1, y0 - 1, x1, y1]  # 1-based inclusive -> 0-based
            assert anno["bbox_mode"] == 0  # BoxMode.XYXY_ABS


def test_voc_layout_is_official(official_datasets):
    """trainval = train + val, test apart, VOC2012 ids as ``2012_000001``, some difficult boxes,
    corners 1-based inside the image, only the mapped classes drawn."""
    root = official_datasets.voc2007
    assert _split_ids(root, "trainval") == _split_ids(root, "train") + _split_ids(root, "val")
    assert not set(_split_ids(root, "trainval")) & set(_split_ids(root, "test"))
    assert _split_ids(official_datasets.voc2012, "trainval")[0] == "2012_000001"
    assert not os.path.exists(os.path.join(official_datasets.voc2012, "ImageSets", "Main",
                                           "test.txt"))
    objects = [o for i in _split_ids(root, "trainval") + _split_ids(root, "test")
               for o in _voc_objects(root, i)]
    assert {d for _, d, _ in objects} == {0, 1}
    assert {c for c, _, _ in objects} <= set(SHAPE_CLASSES.values()) <= set(voc_class_names())
    for _, _, (x0, y0, x1, y1) in objects:
        assert 1 <= x0 < x1 <= 128 and 1 <= y0 < y1 <= 96


@pytest.mark.parametrize("name", COCO_SETS)
def test_detectron2_builtin_coco_sets_load(report, official_datasets, name):
    """Detectron2's own ``coco_2017_<split>``: every image, every annotation with its category
    mapped from the real (non-contiguous) COCO id to the contiguous one, the 80 classes."""
    split = name.split("_")[-1] + "2017"
    with open(os.path.join(official_datasets.coco, "annotations", f"instances_{split}.json")) as f:
        content = json.load(f)
    loaded = report["sets"][name]
    ids = [c["id"] for c in coco_categories()]
    assert len(ids) == 80 and ids[-1] == 90  # real ids, with gaps
    assert loaded["thing_classes"] == [c["name"] for c in coco_categories()]
    assert loaded["id_map"] == {str(i): k for k, i in enumerate(ids)}
    assert loaded["evaluator_type"] == "coco"
    assert len(loaded["records"]) == len(content["images"]) == official_datasets.coco_splits[split]
    annotations = {}
    for a in content["annotations"]:
        annotations.setdefault(a["image_id"], []).append(a)
    for image, record in zip(content["images"], loaded["records"]):
        assert record["image_id"] == image["id"]
        assert record["file_name"] == os.path.join(official_datasets.coco, split,
                                                   image["file_name"])
        assert os.path.isfile(record["file_name"])
        for a, anno in zip(annotations[image["id"]], record["annotations"]):
            assert anno["category_id"] == ids.index(a["category_id"])
            assert anno["bbox"] == a["bbox"] and anno["bbox_mode"] == 1  # XYWH_ABS
            assert anno["iscrowd"] == 0 and len(anno["segmentation"][0]) >= 6
        assert len(record["annotations"]) == len(annotations[image["id"]])
    names = {c["id"]: c["name"] for c in content["categories"]}
    assert {names[a["category_id"]] for a in content["annotations"]} <= set(SHAPE_CLASSES.values())


@pytest.mark.parametrize("name,num_classes", [("voc_2007_trainval", 20), ("coco_2017_train", 80)])
def test_get_detection_dataset_dicts_prints_the_class_histogram(report, official_datasets, name,
                                                               num_classes):
    """The class histogram of ``get_detection_dataset_dicts`` is logged with the right counts.

    Without the numpy-alias fix nothing is printed: ``print_instances_class_histogram`` raises
    ``AttributeError: module 'numpy' has no attribute 'int'``, which Detectron2 swallows."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", report["histograms"][name])
    assert f"Distribution of instances among all {num_classes} categories" in text
    counts = {cls: 0 for cls in SHAPE_CLASSES.values()}
    for record in report["sets"][name]["records"]:
        for anno in record["annotations"]:
            counts[report["sets"][name]["thing_classes"][anno["category_id"]]] += 1
    assert sum(counts.values()) > 0
    for cls, count in counts.items():
        assert re.search(rf"\|\s*{cls}\s*\|\s*{count}\s*\|", text), (cls, count, text)
    assert re.search(rf"\|\s*total\s*\|\s*{sum(counts.values())}\s*\|", text)


def test_imagenet_layout_is_read_by_nst_det(report, official_datasets):
    """``$NST_DATASETS/imagenet`` read as ImageNet: class folders named by WordNet id, images
    through the usual 224 x 224 transforms."""
    per_class = official_datasets.imagenet_per_class
    for split in ("train", "val"):
        got = report["imagenet"][split]
        assert got["classes"] == list(official_datasets.imagenet_classes)
        assert got["len"] == per_class[split] * len(official_datasets.imagenet_classes)
        assert got["shape"] == [3, 224, 224] and got["label"] == 0
    wnid = official_datasets.imagenet_classes[0]
    assert re.fullmatch(r"n\d{8}", wnid)
    assert sorted(os.listdir(os.path.join(official_datasets.imagenet, "val", wnid)))[0] == \
        "ILSVRC2012_val_00000001.JPEG"


def test_numpy_alias_fixes_are_active_in_a_fresh_process(report):
    """The fix of each module whose source uses a numpy alias this numpy lacks (v0.6 on numpy >= 1.24)
    is active in the fresh process; a module without such an alias (Detectron2 main) is left alone."""
    import importlib

    import nst_det  # noqa: F401  (its compatibility fixes as in the fresh process)
    from nst_det import _d2_compat

    for name in ("detectron2.data.datasets.pascal_voc", "detectron2.data.build"):
        needed = _d2_compat.missing_numpy_aliases(importlib.import_module(name))
        assert (f"numpy_aliases:{name}" in report["applied"]) == bool(needed), (name, needed)


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a = write_voc(str(tmp_path / "a"), 2007, {"trainval": 2, "test": 1}, seed=5)
    b = write_voc(str(tmp_path / "b"), 2007, {"trainval": 2, "test": 1}, seed=5)
    c = write_voc(str(tmp_path / "c"), 2007, {"trainval": 2, "test": 1}, seed=6)
    for sub in ("Annotations", "JPEGImages"):
        same = filecmp.dircmp(os.path.join(a, sub), os.path.join(b, sub))
        assert not same.diff_files and not same.left_only and not same.right_only
    assert not filecmp.cmp(os.path.join(a, "JPEGImages", "000001.jpg"),
                           os.path.join(c, "JPEGImages", "000001.jpg"), shallow=False)
    ca = write_coco(str(tmp_path / "a"), {"val2017": 2}, seed=5)
    cb = write_coco(str(tmp_path / "b"), {"val2017": 2}, seed=5)
    name = os.path.join("annotations", "instances_val2017.json")
    assert filecmp.cmp(os.path.join(ca, name), os.path.join(cb, name), shallow=False)


def test_writers_refuse_a_non_empty_target_and_bad_counts(tmp_path):
    """A real VOC2007 / coco / imagenet folder is never written into."""
    for sub in ("VOC2007", "coco", "imagenet"):
        os.makedirs(tmp_path / sub)
        (tmp_path / sub / "real_file").write_text("")
    with pytest.raises(FileExistsError, match=r"write_voc: '.*VOC2007' exists and is not empty"):
        write_voc(str(tmp_path), 2007)
    with pytest.raises(FileExistsError, match=r"write_coco: '.*coco' exists"):
        write_coco(str(tmp_path))
    with pytest.raises(FileExistsError, match=r"write_imagenet: '.*imagenet' exists"):
        write_imagenet(str(tmp_path))
    with pytest.raises(ValueError, match="unknown split 'train'; splits: trainval, test"):
        write_voc(str(tmp_path / "x"), 2007, {"train": 2})
    with pytest.raises(ValueError, match="split 'val2017' needs at least one image"):
        write_coco(str(tmp_path / "x"), {"val2017": 0})
    with pytest.raises(ValueError, match="1 to 9 distinct class names"):
        write_imagenet(str(tmp_path / "x"), classes=[f"n{i:08d}" for i in range(10)])


def test_generate_script_writes_the_official_layouts(tmp_path):
    """``datasets/generate_demo_data.py --official-layout`` writes the four sets under --root."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "datasets",
                        "generate_demo_data.py")
    spec = importlib.util.spec_from_file_location("generate_demo_data", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = script.main(["--root", str(tmp_path), "--official-layout", "--num-train", "3",
                       "--num-test", "1"])
    assert out == [str(tmp_path / d) for d in ("VOC2007", "VOC2012", "coco", "imagenet")]
    assert len(_split_ids(out[0], "trainval")) == 3 and len(_split_ids(out[0], "test")) == 1
    assert os.path.isfile(tmp_path / "coco" / "annotations" / "instances_val2017.json")
