"""Every file nst_det's tools write goes through a temporary file and a rename
(nst_det.engine.atomic): a full disk names the file and leaves the previous one intact, never a
half-written one. The disk is made full by a write that fails with ENOSPC after a few bytes:
Detectron2's own writes (PathManager.open) in a subprocess of tools/train_net.py --eval-only,
nst_det's writer (os.fdopen in nst_det.engine.atomic) in process for the other tools."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here)
from nst_det.detection.load_config import load_nst_cfg
from nst_det.detection.trainer import DistillTrainer
from nst_det.engine import atomic
from nst_det.research.demo_data import generate_demo_data

from disk_full import DiskFullAfter

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
STUDENT = os.path.join(REPO, "configs", "demo", "det_student.yaml")
TINY = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "80", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.DEVICE", "cpu"]

# Runs tools/train_net.py with Detectron2's PathManager.open failing with ENOSPC after 200 bytes
# for the file named by $FULL_DISK_FILE.
FULL_DISK_DRIVER = '''
import os, runpy, sys
import nst_det.detection
from detectron2.utils.file_io import PathManager

sys.path.insert(0, os.environ["TESTS_DIR"])
from disk_full import DiskFullAfter

real_open = PathManager.open


def open_(path, mode="r", **kwargs):
    f = real_open(path, mode, **kwargs)
    if "w" in mode and os.path.basename(path) == os.environ["FULL_DISK_FILE"]:
        return DiskFullAfter(f, 200)
    return f


PathManager.open = open_
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def _full_disk(monkeypatch, room=100):
    real_fdopen = os.fdopen
    monkeypatch.setattr(atomic.os, "fdopen",
                        lambda fd, mode="r", *a, **k: DiskFullAfter(real_fdopen(fd, mode), room))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs_atomic")
    generate_demo_data(str(root / "data" / "demo_det"), num_train=2, num_val=0, num_test=2,
                       height=64, width=80)
    return root


def test_full_disk_while_the_evaluator_writes_names_the_file_and_keeps_the_previous(demo):
    """before: RuntimeError: [enforce fail at inline_container.cc:672] ..., and an unreadable
    instances_predictions.pth stayed in the inference folder."""
    work = demo / "work"
    inference = work / "out" / "inference" / "nst_demo_coco_test"
    inference.mkdir(parents=True)
    (inference / "instances_predictions.pth").write_bytes(b"the previous evaluation")
    cfg = load_nst_cfg(STUDENT, TINY)
    torch.save({"model": DistillTrainer.build_model(cfg).state_dict()}, str(work / "model.pth"))
    (work / "driver.py").write_text(FULL_DISK_DRIVER)
    proc = subprocess.run(
        [sys.executable, "driver.py", TRAIN_NET, "--config-file", STUDENT, "--eval-only", *TINY,
         "MODEL.WEIGHTS", "model.pth", "OUTPUT_DIR", "out", "DATASETS.TEST",
         "('nst_demo_coco_test',)"],
        cwd=str(work), capture_output=True, text=True, timeout=300,
        env=dict(os.environ, DETECTRON2_DATASETS=str(demo / "data"),
                 FULL_DISK_FILE="instances_predictions.pth", TESTS_DIR=TESTS_DIR))
    assert proc.returncode != 0
    assert ("OSError: [Errno 28] no space left on device while writing "
            "'out/inference/nst_demo_coco_test/instances_predictions.pth' (nothing was replaced: "
            "the previous file, if any, is intact)") in proc.stderr, proc.stderr[-3000:]
    assert sorted(os.listdir(inference)) == ["instances_predictions.pth"]  # no temporary folder
    assert (inference / "instances_predictions.pth").read_bytes() == b"the previous evaluation"


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _coco_gt(tmp_path):
    from PIL import Image
    Image.new("RGB", (64, 48)).save(tmp_path / "a.jpg")
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 48, "width": 64}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 20, 15],
                             "area": 300, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "cat"}]}
    (tmp_path / "gt.json").write_text(json.dumps(data))
    (tmp_path / "pred.json").write_text(json.dumps(
        [{"image_id": 1, "category_id": 1, "bbox": [2, 3, 20, 15], "score": 0.9}]))


def test_full_disk_while_writing_metrics_or_pictures_names_the_file(tmp_path, monkeypatch):
    """before: a half-written metrics JSON or PNG stayed behind a bare OSError."""
    monkeypatch.chdir(tmp_path)
    _coco_gt(tmp_path)
    eval_predictions = _tool("eval_predictions")
    eval_predictions.main(["pred.json", "--gt", "gt.json", "--output", "metrics.json"])
    before = (tmp_path / "metrics.json").read_bytes()
    with monkeypatch.context() as m:
        _full_disk(m)
        with pytest.raises(OSError, match=re.escape(
                "no space left on device while writing 'metrics.json' (nothing was replaced")):
            eval_predictions.main(["pred.json", "--gt", "gt.json", "--output", "metrics.json"])
    assert (tmp_path / "metrics.json").read_bytes() == before
    name = eval_predictions.predictions_dataset(gt="gt.json")
    with monkeypatch.context() as m:
        _full_disk(m)
        with pytest.raises(OSError, match=re.escape(
                f"no space left on device while writing '{os.path.join('pictures', 'a.png')}'")):
            _tool("visualize_predictions").main(["pred.json", "--dataset", name, "--output",
                                                 "pictures"])
    assert os.listdir(tmp_path / "pictures") == []
