"""Bad input to the detection trainer gives a clear message naming the culprit (docs/ERRORS.md):
unusable images are skipped with a warning naming the file (nst_det/detection/data/robust_mapper.py), an
empty or unknown data set is an error naming it (nst_det/detection/data/build.py), and a non-finite loss
term, e.g. from NaN features, stops training before the optimizer step with an error naming the
term and the iteration, leaving the last checkpoint untouched (nst_det/engine/train_loop.py)."""
import logging
import os
import re

import numpy as np
import pytest
import torch

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.data.datasets import load_voc_instances
from detectron2.engine import HookBase
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from distill_testing import tiny_distill_cfg

from nst_det.detection.data import (
    CLASS_NAMES,
    RobustDatasetMapper,
    build_test_loader,
    build_train_loader,
)
from nst_det.research.demo_data import generate_demo_data
from nst_det.detection.trainer import DistillTrainer
from nst_det.engine.checkpointer import WeightsMismatchError

TRAIN_SET, EMPTY_SET = "nst_bad_input_train", "nst_bad_input_empty"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Four generated 64 x 80 training images, registered under names of this test only."""
    root = str(tmp_path_factory.mktemp("bad_input") / "demo_det")
    generate_demo_data(root, num_train=4, num_val=0, num_test=1, height=64, width=80)
    dicts = load_voc_instances(root, "train", CLASS_NAMES)
    for name, records in ((TRAIN_SET, dicts), (EMPTY_SET, [])):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda r=records: [dict(x) for x in r])
        MetadataCatalog.get(name).set(thing_classes=list(CLASS_NAMES))
    yield root, dicts
    for name in (TRAIN_SET, EMPTY_SET):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.fixture
def cfg(tmp_path):
    return tiny_distill_cfg(tmp_path, [
        "DATASETS.TRAIN", (TRAIN_SET,), "DATASETS.TEST", (),
        "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 80,
        "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 80,
    ])


def _corrupt_copy(record, folder):
    """The record with its image replaced by a truncated copy of the JPEG."""
    path = os.path.join(str(folder), "truncated.jpg")
    data = open(record["file_name"], "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])
    return dict(record, file_name=path)


def test_unreadable_training_image_is_skipped_naming_the_file(cfg, data, tmp_path, caplog):
    _, dicts = data
    bad = _corrupt_copy(dicts[0], tmp_path)
    mapper = RobustDatasetMapper(cfg, True)
    with caplog.at_level(logging.WARNING):
        assert mapper(bad) is None
    assert f"skipping training image '{bad['file_name']}'" in caplog.text
    # Detectron2's MapDataset then draws another image (on Python >= 3.11 through _d2_compat)
    dataset = MapDataset(DatasetFromList([bad] + dicts[1:], copy=False), mapper)
    assert dataset[0]["file_name"] in {d["file_name"] for d in dicts[1:]}


def test_unreadable_test_image_is_an_error_naming_the_file(cfg, data, tmp_path):
    _, dicts = data
    bad = _corrupt_copy(dicts[0], tmp_path)
    with pytest.raises(OSError, match=r"cannot use image '.*truncated\.jpg'"):
        RobustDatasetMapper(cfg, False)(bad)


def test_box_outside_the_image_is_dropped_with_a_warning(cfg, data, caplog):
    _, dicts = data
    record = dict(dicts[0])
    outside = dict(record["annotations"][0], bbox=[100.0, 70.0, 120.0, 90.0])
    record["annotations"] = [outside] + record["annotations"]
    with caplog.at_level(logging.WARNING):
        mapped = RobustDatasetMapper(cfg, True)(record)
    assert len(mapped["instances"]) == len(dicts[0]["annotations"])
    assert f"image '{record['file_name']}' (80 x 64): 1 box(es) outside the image, dropped: " \
           f"[[100.0, 70.0, 120.0, 90.0]]" in caplog.text


def test_image_with_no_box_left_after_cropping_is_skipped(cfg, data, caplog):
    _, dicts = data
    record = dict(dicts[0])
    # one box over the top-left quarter: a 16 x 16 crop misses it about half of the time
    record["annotations"] = [dict(record["annotations"][0], bbox=[0.0, 0.0, 40.0, 32.0])]
    crop = cfg.clone()
    crop.defrost()
    crop.merge_from_list(["INPUT.CROP.ENABLED", True, "INPUT.CROP.TYPE", "absolute",
                          "INPUT.CROP.SIZE", [16, 16], "INPUT.MIN_SIZE_TRAIN", (64,)])
    mapper = RobustDatasetMapper(crop, True)
    np.random.seed(0)
    with caplog.at_level(logging.WARNING):
        results = [mapper(dict(record)) for _ in range(10)]
    assert any(r is None for r in results) and any(r is not None for r in results)
    assert f"skipping training image '{record['file_name']}': no box left after " \
           "resizing/cropping (1 in its annotation)" in caplog.text


def test_a_data_set_of_unusable_images_is_an_error_not_an_endless_loop(cfg, data, tmp_path):
    _, dicts = data
    bad = [_corrupt_copy(d, tmp_path) for d in dicts[:2]]
    mapper = RobustDatasetMapper(cfg, True, dataset_size=len(bad))
    dataset = MapDataset(DatasetFromList(bad, copy=False), mapper)
    with pytest.raises(ValueError, match=r"2 training images in a row could not be used \(the data "
                                         r"set has 2\); the last one, '.*truncated\.jpg'"):
        dataset[0]


def test_empty_data_set_is_an_error_naming_it(cfg, data):
    empty = cfg.clone()
    empty.defrost()
    empty.DATASETS.TRAIN = (TRAIN_SET, EMPTY_SET)
    with pytest.raises(ValueError, match=rf"data set\(s\) \['{EMPTY_SET}'\] \(DATASETS.TRAIN\) "
                                         "have no images"):
        build_train_loader(empty)
    with pytest.raises(ValueError, match=rf"\['{EMPTY_SET}'\] \(DATASETS.TEST\) have no images"):
        build_test_loader(empty, EMPTY_SET)


def test_unknown_data_set_name_is_an_error_naming_it(cfg, data):
    unknown = cfg.clone()
    unknown.defrost()
    unknown.DATASETS.TRAIN = ("voc_2077_trainval",)
    with pytest.raises(KeyError, match="Dataset 'voc_2077_trainval' is not registered! "
                                       "Available datasets are: "):
        build_train_loader(unknown)


class _Snapshot(HookBase):
    """Copies the weights and the last checkpoint's bytes before the step of ``iteration``."""

    def __init__(self, iteration):
        self.iteration = iteration
        self.weights = self.checkpoint = None

    def before_step(self):
        if self.trainer.iter == self.iteration:
            self.weights = {k: v.clone() for k, v in self.trainer.model.state_dict().items()}
            out = self.trainer.cfg.OUTPUT_DIR
            name = open(os.path.join(out, "last_checkpoint")).read()
            self.checkpoint = name, open(os.path.join(out, name), "rb").read()


def test_non_finite_loss_stops_before_the_step_naming_the_term_and_keeps_the_checkpoint(cfg, data):
    run = cfg.clone()
    run.defrost()
    run.merge_from_list(["SOLVER.MAX_ITER", 4, "SOLVER.CHECKPOINT_PERIOD", 2])
    trainer = DistillTrainer(run)
    trainer.resume_or_load(resume=False)
    snapshot = _Snapshot(2)
    trainer.register_hooks([snapshot])  # after the others: runs last in before_step
    model = trainer.model

    class _ExplodingWeight(HookBase):  # DISTILL.NST.WEIGHT blows up at iteration 2
        def before_step(self):
            if self.trainer.iter == 2:
                model.nst_weight = float("inf")

    trainer.register_hooks([_ExplodingWeight()])
    with pytest.raises(FloatingPointError,
                       match=r"non-finite loss at iteration 2: loss_nst = inf \(rank 0\)\. "
                             "Training stopped before the optimizer step"):
        trainer.train()
    out = run.OUTPUT_DIR
    # the checkpoint of iteration 1 is the last one, byte for byte as it was written
    assert sorted(f for f in os.listdir(out) if f.endswith(".pth")) == ["model_0000001.pth"]
    name, data_before = snapshot.checkpoint
    assert name == "model_0000001.pth" == open(os.path.join(out, "last_checkpoint")).read()
    assert open(os.path.join(out, name), "rb").read() == data_before
    # no optimizer step at iteration 2: the parameters are those it started with
    for key, value in model.named_parameters():
        assert torch.equal(value, snapshot.weights[key]), key


def test_nan_features_give_a_nan_term_and_an_error_naming_the_tensor(cfg, data, caplog):
    """The forward pass does not raise (under DDP the other processes would then wait for this
    one forever): loss_nst is NaN, with a gradient path, and the log names the tensor and level;
    the trainer's check then stops every process (tests/test_ddp_tools.py)."""
    model = build_model(cfg)
    model.train()
    batch = [RobustDatasetMapper(cfg, True)(data[1][0])]
    model.teacher.backbone.register_forward_hook(
        lambda module, args, out: {k: torch.full_like(v, float("nan")) for k, v in out.items()})
    with EventStorage(0), caplog.at_level(logging.ERROR):
        losses = model(batch)
    assert torch.isnan(losses["loss_nst"]) and losses["loss_nst"].requires_grad
    assert all(torch.isfinite(v) for k, v in losses.items() if k != "loss_nst")
    assert re.search(r"nst_loss: teacher \(1, 64, 16, 2\d\) contains NaN or inf \(student "
                     r"feature 'p2', teacher feature 'p2'\)", caplog.text)


def test_truncated_teacher_weights_are_an_error_naming_the_file(cfg, tmp_path):
    data = open(cfg.DISTILL.TEACHER.WEIGHTS, "rb").read()
    truncated = tmp_path / "teacher_truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    broken = cfg.clone()
    broken.defrost()
    broken.DISTILL.TEACHER.WEIGHTS = str(truncated)
    with pytest.raises(WeightsMismatchError, match=r"cannot read teacher weights file "
                                                  r"'.*teacher_truncated\.pth' "
                                                  r"\(DISTILL\.TEACHER\.WEIGHTS\)"):
        build_model(broken)
