"""Tests of nst_det/_d2_compat.py and nst_det/_d2_stand_in_C.py: Detectron2 usable on this stack."""
import random

import numpy as np
import pytest
import torch

import nst_det  # noqa: F401  (installs the compatibility layer)
from nst_det import _d2_compat

stand_in_only = pytest.mark.skipif(
    _d2_compat.has_compiled_ops(), reason="the compiled detectron2._C is installed: no stand-in"
)


@stand_in_only
def test_stand_in_is_installed_and_imports_work():
    import detectron2.layers  # noqa: F401  (imports _C at import time)
    import detectron2.modeling  # noqa: F401
    from detectron2 import _C

    assert getattr(_C, "IS_NST_DET_STAND_IN", False)
    assert "stand_in_C" in _d2_compat.APPLIED


def _tiny_fast_coco_eval():
    """Detectron2's fast COCO evaluator on one image with one box, detections = ground truth."""
    from pycocotools.coco import COCO
    from detectron2.evaluation.fast_eval_api import COCOeval_opt

    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "width": 32, "height": 32}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10],
                         "area": 100, "iscrowd": 0}],
    }
    gt.createIndex()
    dt = gt.loadRes([{"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "score": 0.9}])
    return COCOeval_opt(gt, dt, "bbox")


@stand_in_only
@pytest.mark.parametrize(
    "call",
    [
        lambda: __import__("detectron2.structures", fromlist=["x"]).pairwise_iou_rotated(
            __import__("detectron2.structures", fromlist=["x"]).RotatedBoxes(torch.zeros(1, 5)),
            __import__("detectron2.structures", fromlist=["x"]).RotatedBoxes(torch.zeros(1, 5)),
        ),
        lambda: torch.ops.detectron2.nms_rotated(torch.zeros(2, 5), torch.zeros(2), 0.5),
        # DeformConv runs on the CPU through torchvision; on CUDA it calls this compiled op:
        lambda: __import__("detectron2", fromlist=["_C"])._C.deform_conv_forward(),
        lambda: _tiny_fast_coco_eval().evaluate(),
    ],
    ids=["box_iou_rotated", "nms_rotated", "deform_conv_cuda", "fast_coco_eval"],
)
def test_missing_ops_say_what_is_missing(call):
    from nst_det._d2_stand_in_C import MissingCompiledOpError

    with pytest.raises(MissingCompiledOpError) as err:
        call()
    message = str(err.value)
    assert "is not available" in message and "compiled extension" in message
    assert "facebookresearch/detectron2" in message  # says how to get the compiled one


@stand_in_only
def test_stand_in_probes_see_attribute_errors():
    from detectron2 import _C

    with pytest.raises(AttributeError):
        _C.__wrapped__
    with pytest.raises(AttributeError, match="stand-in"):
        _C.some_future_op
    assert _C.__file__.endswith("_d2_stand_in_C.py")


def test_collect_env_runs():
    from detectron2.utils.collect_env import collect_env_info

    assert "detectron2" in collect_env_info()


def test_faster_rcnn_r50_fpn_trains_and_infers_on_cpu():
    """Faster R-CNN R50-FPN through Detectron2's own config system: 2 iterations, 1 inference."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.INPUT.MIN_SIZE_TEST = 64
    model = build_model(cfg)

    def sample(h, w):
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 60.0, 30.0]]))
        inst.gt_classes = torch.tensor([0, 2])
        return {"image": torch.randint(0, 255, (3, h, w)).float(), "instances": inst,
                "height": h, "width": w}

    batch = [sample(64, 80), sample(72, 64)]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    for it in range(2):
        with EventStorage(it):
            losses = model(batch)
        assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
        total = sum(losses.values())
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": batch[0]["image"], "height": 64, "width": 80}])
    assert out["instances"].image_size == (64, 80)
    assert out["instances"].pred_boxes.tensor.shape[1] == 4


def test_lr_scheduler_hook_saves_torch_schedulers():
    """v0.6 lost torch >= 2 schedulers' state on resume; the hook must save and restore it."""
    from detectron2.engine import hooks

    def make():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3, 6], gamma=0.1)

    opt, sched = make()
    for _ in range(7):
        opt.step()
        sched.step()
    state = hooks.LRScheduler(opt, sched).state_dict()
    assert state.get("last_epoch") == 7

    opt2, sched2 = make()
    hooks.LRScheduler(opt2, sched2).load_state_dict(state)
    assert sched2.last_epoch == 7
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())


def test_map_dataset_falls_back_when_the_mapper_returns_none():
    """v0.6 sampled the fallback index from a set, which Python >= 3.11 refuses."""
    from detectron2.data.common import MapDataset

    data = MapDataset(list(range(6)), lambda x: None if x in (0, 3) else x * 10)
    got = data[0]
    assert got in (10, 20, 40, 50)
    assert data[3] in (10, 20, 40, 50)
    assert data[1] == 10


def test_voc_numpy_fix_gives_the_evaluator_np_bool(monkeypatch):
    """Where numpy lacks ``np.bool`` the VOC evaluator module gets an ``np`` that has it."""
    from detectron2.evaluation import pascal_voc_evaluation as voc

    monkeypatch.setattr(voc, "np", np)
    if hasattr(np, "bool"):
        monkeypatch.delattr(np, "bool")
    _d2_compat._fix_voc_evaluator_numpy()
    assert voc.np.bool is bool
    assert voc.np.array([1, 0]).astype(voc.np.bool).tolist() == [True, False]


def test_sequence_sampler_accepts_sets_reproducibly():
    a = _d2_compat._SequenceSampler(42).sample({5, 1, 9}, k=2)
    b = _d2_compat._SequenceSampler(42).sample({9, 5, 1}, k=2)
    assert a == b and set(a) <= {1, 5, 9}
    assert random.Random(42).sample([1, 5, 9], k=2) == a
