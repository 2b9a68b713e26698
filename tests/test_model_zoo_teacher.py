"""A teacher named from Detectron2's model zoo (DISTILL.TEACHER.CONFIG zoo://...), its weights a
local .pkl in the model zoo's format, loaded strictly; nothing is downloaded. The weights here are
a randomly initialised R-101 FPN saved in that format."""
import os
import re
import subprocess
import sys

import pytest
import torch

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from nst_det.research.demo_data import generate_demo_data
from nst_det.detection.load_config import load_nst_cfg, load_teacher_cfg
from nst_det.detection.teacher import build_teacher_model
from nst_det.engine.checkpointer import WeightsMismatchError

from distill_testing import save_model_zoo_pkl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDENT_NST = os.path.join(REPO, "configs", "demo", "det_student_nst.yaml")
ZOO_TEACHER = "zoo://COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml"
TINY = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "80", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "80", "SOLVER.IMS_PER_BATCH", "2", "MODEL.DEVICE", "cpu"]


@pytest.fixture(scope="module")
def zoo_teacher(tmp_path_factory):
    """(teacher model, its .pkl) of the model-zoo R-101 FPN config, random weights."""
    torch.manual_seed(0)
    teacher = build_teacher_model(ZOO_TEACHER)
    path = str(tmp_path_factory.mktemp("zoo") / "model_final_f6e8b1.pkl")
    return teacher, save_model_zoo_pkl(teacher, path)


def test_zoo_name_resolves_inside_detectron2_and_is_never_a_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_nst_cfg(STUDENT_NST, ["DISTILL.TEACHER.CONFIG", ZOO_TEACHER])
    assert cfg.DISTILL.TEACHER.CONFIG == ZOO_TEACHER  # not turned into <cwd>/zoo:/...
    teacher_cfg = load_teacher_cfg(cfg.DISTILL.TEACHER.CONFIG, device="cpu")
    assert (teacher_cfg.MODEL.RESNETS.DEPTH, teacher_cfg.MODEL.DEVICE) == (101, "cpu")
    assert teacher_cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"
    with pytest.raises(FileNotFoundError, match=re.escape(
            "DISTILL.TEACHER.CONFIG 'zoo://COCO-Detection/nope.yaml': Detectron2's model zoo has "
            "no config 'COCO-Detection/nope.yaml'")):
        load_teacher_cfg("zoo://COCO-Detection/nope.yaml")


def test_zoo_teacher_loads_strictly_from_a_local_pkl_and_teaches_the_student(zoo_teacher):
    teacher, pkl = zoo_teacher
    # the weights as loaded: folding the teacher's norms (DISTILL.TEACHER.FOLD_NORMS) rewrites them
    cfg = load_nst_cfg(STUDENT_NST, TINY + ["DISTILL.TEACHER.CONFIG", ZOO_TEACHER,
                                            "DISTILL.TEACHER.WEIGHTS", pkl,
                                            "DISTILL.TEACHER.FOLD_NORMS", False])
    torch.manual_seed(1)
    model = build_model(cfg)
    loaded = model.teacher.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in teacher.state_dict().items())
    assert model.teacher.backbone.bottom_up.stages[2][0].conv1.weight.shape[1] == 512  # R-101 res4
    assert not any(k.startswith("teacher") for k in model.state_dict())
    image = torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8)
    instances = Instances((64, 80), gt_boxes=Boxes(torch.tensor([[10.0, 10.0, 40.0, 40.0]])),
                          gt_classes=torch.tensor([0]))
    model.train()
    with EventStorage():
        losses = model([{"image": image, "instances": instances}] * 2)
    assert torch.isfinite(losses["loss_nst"]) and losses["loss_nst"] > 0
    losses["loss_nst"].backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.backbone.fpn_output2.weight.grad.abs().sum() > 0


def test_zoo_teacher_pkl_with_a_missing_tensor_is_refused_naming_it(zoo_teacher, tmp_path):
    teacher, _ = zoo_teacher
    pkl = save_model_zoo_pkl(teacher, str(tmp_path / "partial.pkl"),
                              drop=("roi_heads.box_predictor.cls_score.weight",))
    cfg = load_nst_cfg(STUDENT_NST, TINY + ["DISTILL.TEACHER.CONFIG", ZOO_TEACHER,
                                            "DISTILL.TEACHER.WEIGHTS", pkl])
    with pytest.raises(WeightsMismatchError, match=r"partial\.pkl.*DISTILL\.TEACHER\.WEIGHTS.*"
                                                   r"roi_heads\.box_predictor\.cls_score\.weight"):
        build_model(cfg)


def test_train_net_distils_from_a_zoo_teacher(zoo_teacher, tmp_path):
    """The real tool, from outside the repo, with the shipped demo student config."""
    _, pkl = zoo_teacher
    data = tmp_path / "datasets"
    generate_demo_data(str(data / "demo_det"), num_train=2, num_val=0, num_test=1, height=64,
                       width=80)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
         STUDENT_NST, *TINY, "SOLVER.MAX_ITER", "2",
         "DISTILL.TEACHER.CONFIG", ZOO_TEACHER, "DISTILL.TEACHER.WEIGHTS", pkl,
         "OUTPUT_DIR", "out", "DATASETS.TEST", "()"],
        cwd=str(tmp_path), env=dict(os.environ, DETECTRON2_DATASETS=str(data)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    # the model-zoo teacher has 80 classes, the demo student 3: NST needs no class agreement
    assert proc.returncode == 0, proc.stdout
    assert "loss_nst" in proc.stdout and (tmp_path / "out" / "model_final.pth").is_file()
    assert re.search(r"teacher.*faster_rcnn_R_101_FPN_3x\.yaml", proc.stdout), proc.stdout
