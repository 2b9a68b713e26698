"""Every student x teacher pair of nst_det/detection/meta_arch.py (DistillDetector): GeneralizedRCNN
(Faster and Mask R-CNN), RetinaNet and FCOS students; yaml, model-zoo yaml and LazyConfig teachers.
Each pair comes from a shipped config (teacher weights: random, saved as the config expects), runs
on the CPU with two tiny images, and must: train with a finite loss_nst whose gradient reaches the
student only, log nst/<level>, evaluate with the student alone and save no teacher tensor."""
import json
import logging
import math
import os
import re
import subprocess
import sys

import pytest
import torch

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from nst_det.detection.architectures import DISTILL_META_ARCHITECTURES
from nst_det.detection.export import build_plain_student
from nst_det.detection.load_config import is_lazy_config, load_nst_cfg, student_cfg
from nst_det.detection.teacher import build_teacher_model
from torch import nn

from distill_testing import save_model_zoo_pkl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
LAZY_FCOS = "zoo://COCO-Detection/fcos_R_50_FPN_1x.py"
ZOO_C4 = "zoo://COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"
CPU = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""]

# id -> (shipped student config, overrides). The teacher is the config's unless overridden.
PAIRS = {
    "retinanet_from_retinanet": ("voc_retinanet_R18_nst.yaml", []),
    "retinanet_from_frcnn": ("voc_retinanet_R18_from_frcnn_nst.yaml", []),
    "frcnn_from_retinanet": ("voc_frcnn_R18_nst.yaml", [
        "DISTILL.TEACHER.CONFIG", os.path.join(CONFIGS, "voc_retinanet_R101_teacher.yaml"),
        "DISTILL.STUDENT_FEATURES", ["p3", "p4", "p5", "p6"],
        "DISTILL.TEACHER_FEATURES", ["p3", "p4", "p5", "p6"]]),
    "frcnn_narrow_fpn_from_frcnn": ("voc_frcnn_R18_narrow_fpn_nst.yaml", []),
    "maskrcnn_from_frcnn": ("coco_frcnn_R18_nst.yaml", ["MODEL.MASK_ON", True]),
    "frcnn_from_zoo_frcnn_yaml": ("voc_frcnn_R18_nst_zoo_teacher.yaml", []),
    "frcnn_from_lazy_maskrcnn_syncbn": ("coco_frcnn_R18_nst_lazy_teacher.yaml", []),
    "fcos_from_frcnn": ("coco_fcos_R18_nst.yaml", []),
    "fcos_from_lazy_fcos_kd": ("coco_fcos_R18_nst.yaml", [
        "DISTILL.TEACHER.CONFIG", LAZY_FCOS, "DISTILL.KD.WEIGHT", 1.0,
        "DISTILL.STUDENT_FEATURES", ["p3", "p4", "p5", "p6", "p7"],
        "DISTILL.TEACHER_FEATURES", ["p3", "p4", "p5", "p6", "p7"]]),
    "retinanet_from_retinanet_kd": ("voc_retinanet_R18_nst.yaml", ["DISTILL.KD.WEIGHT", 1.0]),
    "frcnn_from_c4_by_stride": ("voc_frcnn_R18_nst.yaml", [
        "DISTILL.TEACHER.CONFIG", ZOO_C4, "DISTILL.STUDENT_FEATURES", [],
        "DISTILL.TEACHER_FEATURES", [], "DISTILL.MATCH_LEVELS", "stride"]),
}


def random_teacher_weights(teacher_config: str, folder) -> str:
    """A randomly initialised teacher of ``teacher_config`` saved in the format its config expects:
    a .pkl of the model zoo for zoo:// and LazyConfig teachers, a checkpoint .pth otherwise."""
    torch.manual_seed(0)
    teacher = build_teacher_model(teacher_config)
    name = re.sub(r"\W", "_", teacher_config)[-60:]
    if teacher_config.startswith("zoo://"):
        return save_model_zoo_pkl(teacher, os.path.join(str(folder), name + ".pkl"))
    path = os.path.join(str(folder), name + ".pth")
    torch.save({"model": teacher.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    """teacher config -> its random weights file, each written once."""
    folder, cache = tmp_path_factory.mktemp("teachers"), {}

    def get(teacher_config):
        if teacher_config not in cache:
            cache[teacher_config] = random_teacher_weights(teacher_config, folder)
        return cache[teacher_config]
    return get


def pair_cfg(pair, teacher_weights, *opts):
    config, overrides = PAIRS[pair]
    path = os.path.join(CONFIGS, config)
    opts = CPU + overrides + list(opts)
    teacher_config = load_nst_cfg(path, opts).DISTILL.TEACHER.CONFIG
    return load_nst_cfg(path, opts + ["DISTILL.TEACHER.WEIGHTS", teacher_weights(teacher_config)])


def tiny_batch(with_masks=False):
    """Two 64 x 80 images with one box each (and its mask)."""
    g = torch.Generator().manual_seed(0)
    batch = []
    for box in ([8.0, 10.0, 40.0, 44.0], [30.0, 12.0, 70.0, 50.0]):
        instances = Instances((64, 80), gt_boxes=Boxes(torch.tensor([box])),
                              gt_classes=torch.tensor([1]))
        if with_masks:
            mask = torch.zeros(1, 64, 80, dtype=torch.bool)
            x0, y0, x1, y1 = (int(v) for v in box)
            mask[:, y0:y1, x0:x1] = True
            instances.gt_masks = BitMasks(mask)
        image = torch.randint(0, 256, (3, 64, 80), generator=g, dtype=torch.uint8)
        batch.append({"image": image, "instances": instances, "height": 64, "width": 80})
    return batch


@pytest.fixture(scope="module", params=list(PAIRS))
def trained(request, teacher_weights, tmp_path_factory, caplog_module):
    """One pair built from its config, two SGD steps on the tiny batch: what the tests check."""
    pair = request.param
    cfg = pair_cfg(pair, teacher_weights)
    log_start = len(caplog_module.text)
    torch.manual_seed(1)
    model = build_model(cfg)
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    model.train()
    batch = tiny_batch(with_masks=cfg.MODEL.MASK_ON)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    with EventStorage() as storage:
        losses = model(batch)
        losses["loss_nst"].backward(retain_graph=True)  # loss_nst alone: where does it reach?
        nst_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad()
        storage.step()
        second = model(batch)
        sum(second.values()).backward()
        optimizer.step()
        metrics = {k: v[0] for k, v in storage.latest().items()}
    out = tmp_path_factory.mktemp("checkpoint")
    DetectionCheckpointer(model, str(out)).save("model_final")
    return dict(pair=pair, cfg=cfg, model=model, losses=[losses, second], nst_grads=nst_grads,
                metrics=metrics, teacher_before=teacher_before, batch=batch,
                checkpoint=str(out / "model_final.pth"), log=caplog_module.text[log_start:])


@pytest.fixture(scope="module")
def caplog_module():
    """Log records of nst_det while a module-scoped fixture runs."""
    class Text(logging.Handler):
        text = ""

        def emit(self, record):
            Text.text += record.getMessage() + "\n"
    handler = Text()
    logger = logging.getLogger("nst_det")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_loss_nst_is_finite_and_reaches_the_student_only(trained):
    for losses in trained["losses"]:
        assert torch.isfinite(losses["loss_nst"]) and losses["loss_nst"] > 0
        assert all(torch.isfinite(v) for v in losses.values())
    model = trained["model"]
    assert any(n.startswith("backbone.") and g.abs().sum() > 0
               for n, g in trained["nst_grads"].items())
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.parameters())
    after = model.teacher.state_dict()
    assert all(torch.equal(after[k], v) for k, v in trained["teacher_before"].items())


def test_each_matched_level_is_logged(trained):
    model = trained["model"]
    assert model.student_features and len(model.student_features) == len(model.teacher_features)
    for name in model.student_features:
        value = trained["metrics"][f"nst/{name}"]
        assert math.isfinite(value) and value >= 0  # a finite MMD^2


def test_kd_pairs_add_a_finite_loss_kd_only_when_asked(trained):
    kd_on = trained["cfg"].DISTILL.KD.WEIGHT > 0
    assert ("loss_kd" in trained["losses"][0]) == kd_on
    if kd_on:
        assert torch.isfinite(trained["losses"][0]["loss_kd"])


def test_inference_runs_the_student_alone(trained):
    model = trained["model"]
    calls = []
    handle = model.teacher.register_forward_pre_hook(lambda *a: calls.append(1))
    handle_backbone = model.teacher.backbone.register_forward_pre_hook(lambda *a: calls.append(1))
    model.eval()
    try:
        with torch.no_grad():
            outputs = model([{k: v for k, v in x.items() if k != "instances"}
                             for x in trained["batch"]])
    finally:
        handle.remove()
        handle_backbone.remove()
        model.train()
    assert calls == [] and len(outputs) == 2 and "instances" in outputs[0]


def test_no_teacher_tensor_is_saved_and_the_teacher_lives_on_the_student_device(trained):
    model = trained["model"]
    plain = build_model(student_cfg(trained["cfg"]))
    saved = torch.load(trained["checkpoint"], map_location="cpu", weights_only=False)["model"]
    assert set(saved) == set(model.state_dict()) == set(plain.state_dict())
    assert {p.device for p in model.teacher.parameters()} == {model.device}


def test_the_checkpoint_loads_strictly_into_the_plain_student(trained):
    """The deployable student: the saved checkpoint fills every tensor of the plain detector of
    student_cfg, strictly (no key missing, none left over, every shape right; else an error)."""
    student = build_plain_student(trained["cfg"], trained["checkpoint"])
    assert type(student).__name__ == DISTILL_META_ARCHITECTURES[
        trained["cfg"].MODEL.META_ARCHITECTURE]
    model = trained["model"].state_dict()
    assert all(torch.equal(v, model[k]) for k, v in student.state_dict().items())


def test_lazy_teachers_are_frozen_with_their_batch_norms_fixed(trained):
    teacher_config = trained["cfg"].DISTILL.TEACHER.CONFIG
    if not is_lazy_config(teacher_config):
        pytest.skip("a yaml teacher: its norms are as its config says")
    teacher = trained["model"].teacher
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)) for m in teacher.modules())
    if "syncbn" in trained["pair"]:
        # frozen, then folded into their convolutions (DISTILL.TEACHER.FOLD_NORMS): a Conv2d
        # whose norm is gone and which has a bias (the backbone's convolutions have none before)
        frozen = sum(isinstance(m, FrozenBatchNorm2d) for m in teacher.modules())
        folded = sum(isinstance(m, nn.Conv2d) and getattr(m, "norm", "") is None
                     and m.bias is not None for m in teacher.backbone.bottom_up.modules())
        assert frozen + folded > 50 and (folded > 50) == trained["cfg"].DISTILL.TEACHER.FOLD_NORMS
        assert re.search(r"\d+ BatchNorm/SyncBatchNorm layers turned into FrozenBatchNorm2d",
                         trained["log"])


@pytest.mark.parametrize("pair, opts, words", [
    ("retinanet_from_frcnn", ["DISTILL.KD.WEIGHT", 1.0],
     "heads of the DistillRetinaNet student and the GeneralizedRCNN teacher cannot be compared"),
    ("fcos_from_frcnn", ["DISTILL.KD.WEIGHT", 1.0, "DISTILL.TEACHER.CONFIG",
                         os.path.join(CONFIGS, "coco_retinanet_R101_teacher.yaml")],
     "predict different anchors or locations"),
    ("retinanet_from_retinanet_kd", ["MODEL.ANCHOR_GENERATOR.SIZES", [[32], [64], [128], [256], [512]]],
     r"student: \[\(8, 3\), .*teacher: \[\(8, 9\)"),
    ("retinanet_from_retinanet_kd", ["MODEL.RETINANET.NUM_CLASSES", 7],
     "the student has 7 classes but the teacher 20"),
    ("frcnn_from_c4_by_stride", ["DISTILL.MATCH_LEVELS", "name"],
     r"no student backbone output .* has a teacher output \{'res4': 16\} of the same name"),
    ("frcnn_from_c4_by_stride", ["DISTILL.MATCH_LEVELS", "strides"],
     "DISTILL.MATCH_LEVELS is 'strides'"),
])
def test_pairs_that_cannot_work_are_refused_naming_why(pair, opts, words, teacher_weights):
    cfg = pair_cfg(pair, teacher_weights, *opts)
    with pytest.raises(ValueError, match=words):
        build_model(cfg)


def test_match_levels_by_stride_pairs_each_student_level_with_the_teacher_level_of_its_stride(
        teacher_weights):
    model = build_model(pair_cfg("frcnn_from_c4_by_stride", teacher_weights))
    assert (model.student_features, model.teacher_features) == (["p4"], ["res4"])


def test_train_net_trains_and_evaluates_a_retinanet_student_of_a_faster_rcnn_teacher(
        official_env, teacher_weights, tmp_path):
    """The real tool with the shipped config, on VOC in its official layout
    ($DETECTRON2_DATASETS), from a folder outside the repository: 2 iterations, then the VOC
    evaluation of the student alone; the checkpoint holds the student only."""
    config = os.path.join(CONFIGS, "voc_retinanet_R18_from_frcnn_nst.yaml")
    teacher = teacher_weights(load_nst_cfg(config).DISTILL.TEACHER.CONFIG)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", config,
         "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "DISTILL.TEACHER.WEIGHTS", teacher,
         "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST",
         "64", "INPUT.MAX_SIZE_TEST", "96", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
         "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", "out"],
        cwd=str(tmp_path), env=official_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert re.search(r"Distilling a GeneralizedRCNN teacher into a DistillRetinaNet student; "
                     r"NST on student \['p3', 'p4', 'p5', 'p6'\]", proc.stdout), proc.stdout[-5000:]
    assert re.search(r"loss_nst: [0-9.e+-]+", proc.stdout)
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.json").open()]
    train_rows = [m for m in metrics if "loss_nst" in m]
    assert train_rows and all(f"nst/p{i}" in train_rows[-1] for i in (3, 4, 5, 6)), metrics
    assert "Evaluating voc_2007_test with the VOC 2007 metric" in proc.stdout, proc.stdout[-3000:]
    assert re.search(r"copypaste: AP,AP50,AP75.*\n.*copypaste: [0-9.]+,[0-9.]+", proc.stdout)
    saved = torch.load(str(tmp_path / "out" / "model_final.pth"), map_location="cpu",
                       weights_only=False)["model"]
    assert saved and not any(k.startswith(("teacher", "proposal_generator", "roi_heads"))
                             for k in saved)
    assert any(k.startswith("head.cls_score") for k in saved)
