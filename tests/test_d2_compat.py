"""Tests of nst_det/_d2_compat.py and nst_det/_d2_stand_in_C.py: Detectron2 usable on this stack."""
import itertools
import logging
import os
import random
import re
import types
import warnings

import numpy as np
import pytest
import torch

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
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


# ---- numpy aliases (np.str, np.int, np.float, np.bool, np.object) -----------------------------

_VOC_XML = """<annotation><filename>{id}.jpg</filename>
<size><width>40</width><height>30</height><depth>3</depth></size>
<object><name>a</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>
<bndbox><xmin>3</xmin><ymin>4</ymin><xmax>20</xmax><ymax>25</ymax></bndbox></object>
<object><name>b</name><pose>Unspecified</pose><truncated>0</truncated><difficult>1</difficult>
<bndbox><xmin>21</xmin><ymin>2</ymin><xmax>39</xmax><ymax>12</ymax></bndbox></object>
</annotation>"""


_UNIQUE = itertools.count()


def _tiny_voc(root, ids, split="trainval"):
    """A VOC folder (Annotations/, ImageSets/Main/<split>.txt) of 40 x 30 images with two
    objects each: "a" at 1-based (3, 4, 20, 25) and a difficult "b" at (21, 2, 39, 12)."""
    os.makedirs(os.path.join(root, "Annotations"), exist_ok=True)
    os.makedirs(os.path.join(root, "ImageSets", "Main"), exist_ok=True)
    for file_id in ids:
        with open(os.path.join(root, "Annotations", f"{file_id}.xml"), "w") as f:
            f.write(_VOC_XML.format(id=file_id))
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("".join(f"{i}\n" for i in ids))
    return str(root)


def _load_voc(tmp_path, caplog):
    from detectron2.data.datasets.pascal_voc import load_voc_instances

    dicts = load_voc_instances(_tiny_voc(tmp_path / "voc", ["000007", "000009"]), "trainval",
                               ["a", "b"])
    assert [d["image_id"] for d in dicts] == ["000007", "000009"]
    assert dicts[0]["annotations"][0]["bbox"] == [2.0, 3.0, 20.0, 25.0]  # 1-based -> 0-based
    assert [a["category_id"] for a in dicts[1]["annotations"]] == [0, 1]


def _class_histogram(tmp_path, caplog):
    """Through ``get_detection_dataset_dicts``, which swallows the histogram's AttributeError."""
    from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts

    tag = next(_UNIQUE)
    name = f"nst_test_histogram_{tag}"
    # a table of its own each time: Detectron2 logs one text once per process (log_first_n)
    classes = [f"kind{i}_{tag}" for i in range(3)]
    dicts = [{"file_name": f"{i}.jpg", "image_id": i, "height": 8, "width": 8,
              "annotations": [{"category_id": c, "bbox": [0, 0, 4, 4], "bbox_mode": 0}
                              for c in cats]}
             for i, cats in enumerate([[0, 2], [2], [2, 0, 2]])]
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=classes)
    try:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="detectron2.data.build"):
            get_detection_dataset_dicts([name])
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    text = caplog.text
    assert "Distribution of instances among all 3 categories" in text, \
        "no class histogram was logged"
    for cls, count in zip(classes, (2, 0, 4)):
        assert re.search(rf"\|\s*{cls}\s*\|\s*{count}\s*\|", text), text
    assert re.search(r"\|\s*total\s*\|\s*6\s*\|", text), text


def _voc_eval(tmp_path, caplog):
    from detectron2.evaluation.pascal_voc_evaluation import voc_eval

    root = _tiny_voc(tmp_path / "voc_eval", ["000001"], split="test")
    with open(os.path.join(root, "det_a.txt"), "w") as f:
        f.write("000001 0.9 3 4 20 25\n000001 0.2 30 20 39 29\n")
    with open(os.path.join(root, "det_b.txt"), "w") as f:  # only the difficult object: ignored
        f.write("000001 0.8 21 2 39 12\n")
    annopath = os.path.join(root, "Annotations", "{}.xml")
    imageset = os.path.join(root, "ImageSets", "Main", "test.txt")
    detpath = os.path.join(root, "det_{}.txt")
    _, _, ap = voc_eval(detpath, annopath, imageset, "a", 0.5, use_07_metric=True)
    assert ap == pytest.approx(1.0)
    with np.errstate(invalid="ignore", divide="ignore"):  # recall of 0 / 0 ground truth
        _, _, ap_b = voc_eval(detpath, annopath, imageset, "b", 0.5, use_07_metric=True)
    assert np.isnan(ap_b) or ap_b == 0  # no non-difficult ground truth for "b"


def _sem_seg_eval(tmp_path, caplog):
    from PIL import Image
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import SemSegEvaluator

    gt = np.zeros((6, 8), np.uint8)
    gt[:, 4:] = 1
    gt[0, 0] = 255  # ignored
    Image.fromarray(gt).save(str(tmp_path / "gt.png"))
    name = f"nst_test_sem_seg_{next(_UNIQUE)}"
    DatasetCatalog.register(name, lambda: [{"file_name": "img.jpg",
                                            "sem_seg_file_name": str(tmp_path / "gt.png")}])
    MetadataCatalog.get(name).set(stuff_classes=["left", "right"], ignore_label=255)
    try:
        evaluator = SemSegEvaluator(name, distributed=False)
        evaluator.reset()
        logits = torch.zeros(2, 6, 8)
        logits[1, :, 4:] = 1.0
        evaluator.process([{"file_name": "img.jpg"}], [{"sem_seg": logits}])
        result = evaluator.evaluate()
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert result["sem_seg"]["mIoU"] == pytest.approx(100.0)


def _polygon_masks(tmp_path, caplog):
    from detectron2.structures import PolygonMasks, polygons_to_bitmask

    mask = polygons_to_bitmask([np.array([0, 0, 6, 0, 6, 6, 0, 6], float)], 8, 8)
    assert mask.dtype == bool and mask.sum() >= 36
    assert polygons_to_bitmask([], 4, 5).shape == (4, 5)
    assert PolygonMasks([[np.array([0, 0, 4, 0, 4, 4.0])], []]).nonempty().tolist() == \
        [True, False]


def _panoptic_masks(tmp_path, caplog):
    from detectron2.utils.visualizer import _PanopticPrediction

    seg = torch.zeros(6, 8, dtype=torch.int32)
    seg[:, 4:] = 1
    seg[0, :2] = 2
    pred = _PanopticPrediction(seg, [{"id": 1, "category_id": 0, "isthing": True},
                                     {"id": 2, "category_id": 1, "isthing": False}])
    assert pred.non_empty_mask().sum() == 24 + 2
    assert [m.sum() for m, _ in pred.semantic_masks()] == [2]
    assert [m.sum() for m, _ in pred.instance_masks()] == [24]


def _video_colours(tmp_path, caplog):
    from detectron2.data import MetadataCatalog
    from detectron2.utils.video_visualizer import VideoVisualizer, _DetectedInstance

    video = VideoVisualizer(MetadataCatalog.get("nst_test_video_metadata"))
    detected = [_DetectedInstance(0, np.array([0.0, 0.0, 10.0, 10.0]), None, None, 8)]
    assert len(video._assign_colors(detected)) == 1


# module -> (the call that fails there when numpy lacks the alias, the alias, how it fails)
_NO = "module 'numpy' has no attribute '{}'"
ALIAS_CALLS = {
    "detectron2.data.datasets.pascal_voc": (_load_voc, "str", _NO.format("str")),
    "detectron2.data.build": (_class_histogram, "int", "no class histogram was logged"),
    "detectron2.evaluation.pascal_voc_evaluation": (_voc_eval, "bool", _NO.format("bool")),
    "detectron2.evaluation.sem_seg_evaluation": (_sem_seg_eval, "int", _NO.format("int")),
    "detectron2.structures.masks": (_polygon_masks, "bool", _NO.format("bool")),
    "detectron2.utils.visualizer": (_panoptic_masks, "bool", _NO.format("bool")),
    "detectron2.utils.video_visualizer": (_video_colours, "bool", _NO.format("bool")),
}


def _uses_alias(module_name):
    import importlib

    return bool(_d2_compat.missing_numpy_aliases(importlib.import_module(module_name),
                                                 numpy_module=types.ModuleType("no_aliases")))


def test_every_alias_using_module_is_listed():
    """The list the fix walks covers every module of this test (and vice versa)."""
    assert set(_d2_compat.NUMPY_ALIAS_MODULES) == set(ALIAS_CALLS)


class _NumpyWithoutAliases(types.ModuleType):
    """numpy as numpy 1.24 to 1.26 show it to a module: without any alias of builtins. (numpy 2's
    own code needs ``np.bool``: it cannot be taken from the numpy module itself.)"""

    def __init__(self):
        super().__init__("numpy")

    def __getattr__(self, name):
        if name in _d2_compat.NUMPY_ALIASES:
            raise AttributeError(f"module 'numpy' has no attribute '{name}'")
        return getattr(np, name)


@pytest.mark.parametrize("module_name", list(ALIAS_CALLS))
def test_numpy_alias_fix_makes_the_crashing_call_work(module_name, monkeypatch, tmp_path, caplog):
    """With a numpy that lacks every alias (numpy 1.24 to 1.26), each call fails with the module's
    own numpy, and works once the fix gave the module its proxy.

    Without the fix: ``load_voc_instances``: ``AttributeError: module 'numpy' has no attribute
    'str'``; ``get_detection_dataset_dicts`` logs no class histogram (its ``np.int`` error is
    swallowed); ``SemSegEvaluator``: ``... no attribute 'int'``; the VOC evaluator, polygon
    masks and the visualizers: ``... no attribute 'bool'``."""
    import importlib

    module = importlib.import_module(module_name)
    call, alias, broken = ALIAS_CALLS[module_name]
    if not _uses_alias(module_name):
        pytest.skip(f"{module_name} of this Detectron2 uses no numpy alias")
    for sub in ("without", "with"):
        (tmp_path / sub).mkdir()
    monkeypatch.setattr(module, "np", _NumpyWithoutAliases())
    with pytest.raises((AttributeError, AssertionError), match=re.escape(broken)):
        call(tmp_path / "without", caplog)

    monkeypatch.setattr(module, "np", np)  # the module as Detectron2 left it
    monkeypatch.setattr(_d2_compat, "_numpy_has", lambda name, numpy_module=np: False)
    monkeypatch.setattr(_d2_compat, "APPLIED", [])
    _d2_compat._fix_numpy_aliases([module_name])
    assert _d2_compat.APPLIED == [f"numpy_aliases:{module_name}"]
    assert isinstance(module.np, _d2_compat.NumpyProxy)
    assert getattr(module.np, alias) is _d2_compat.NUMPY_ALIASES[alias]
    assert vars(np).get(alias) is not _d2_compat.NUMPY_ALIASES[alias]  # numpy itself unchanged
    call(tmp_path / "with", caplog)


@pytest.mark.parametrize("module_name", list(ALIAS_CALLS))
def test_alias_using_calls_work_after_import_nst_det(module_name, tmp_path, caplog):
    """The same calls on this stack as ``import nst_det`` left it (proxy where numpy lacks an
    alias the module uses, Detectron2 untouched elsewhere)."""
    ALIAS_CALLS[module_name][0](tmp_path, caplog)


def test_numpy_alias_fixes_active_on_this_stack():
    """After ``import nst_det``: every listed module that uses an alias this numpy lacks has its
    proxy and its entry in APPLIED; numpy itself gained nothing."""
    import importlib

    for module_name in _d2_compat.NUMPY_ALIAS_MODULES:
        module = importlib.import_module(module_name)
        lacking = [a for a in _d2_compat.NUMPY_ALIASES if not _d2_compat._numpy_has(a)]
        needed = _d2_compat.missing_numpy_aliases(module)
        entry = f"numpy_aliases:{module_name}"
        if needed:
            assert entry in _d2_compat.APPLIED and isinstance(module.np, _d2_compat.NumpyProxy)
            assert set(needed["np"]) <= set(lacking)
            for alias in needed["np"]:
                assert getattr(module.np, alias) is _d2_compat.NUMPY_ALIASES[alias]
        else:
            assert entry not in _d2_compat.APPLIED
    # numpy >= 1.24, and a Detectron2 whose VOC loader still uses np.str (v0.6; main has no alias
    # left, and there the fixes stay inactive: checked by the loop above)
    if not _d2_compat._numpy_has("str") and _uses_alias("detectron2.data.datasets.pascal_voc"):
        assert "numpy_aliases:detectron2.data.datasets.pascal_voc" in _d2_compat.APPLIED
        assert "numpy_aliases:detectron2.data.build" in _d2_compat.APPLIED
        assert not _d2_compat._numpy_has("str") and not _d2_compat._numpy_has("int")


def test_numpy_alias_fix_is_inactive_where_numpy_has_the_aliases(monkeypatch):
    """With a numpy that has every alias (numpy < 1.24) the fix changes no module."""
    import importlib

    with warnings.catch_warnings():  # numpy >= 2.4 warns on looking up np.str / np.object
        warnings.simplefilter("ignore", FutureWarning)
        for name, value in _d2_compat.NUMPY_ALIASES.items():
            monkeypatch.setattr(np, name, value, raising=False)
    modules = [importlib.import_module(m) for m in _d2_compat.NUMPY_ALIAS_MODULES]
    for module in modules:
        monkeypatch.setattr(module, "np", np)
    monkeypatch.setattr(_d2_compat, "APPLIED", [])
    _d2_compat._fix_numpy_aliases()
    assert _d2_compat.APPLIED == []
    assert all(module.np is np for module in modules)


def test_numpy_alias_probe_reads_the_source(tmp_path):
    """The probe finds aliases under any name bound to numpy, ignores numpy's own ``np.int64``
    and ``np.str_``, and finds nothing in a source without aliases (Detectron2's main)."""
    import importlib.util

    def probe(source):
        path = tmp_path / f"probe_{abs(hash(source))}.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(path.stem, str(path))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return _d2_compat.missing_numpy_aliases(module, numpy_module=types.ModuleType("bare"))

    assert probe("import numpy as np\nx = np.zeros(2, dtype=np.int64)\ny = np.str_\n") == {}
    assert probe("import numpy as np\nf = lambda: np.zeros(2, dtype=np.int)\n") == {"np": ["int"]}
    assert probe("import numpy\ndef f(a):\n    return a.astype(numpy.bool), numpy.float\n") == \
        {"numpy": ["bool", "float"]}
    assert probe("x = 'np.str'\n") == {}  # no numpy bound: nothing to give a proxy to
    # the real numpy (not the bare stand-in above) decides by default
    lacking = [a for a in _d2_compat.NUMPY_ALIASES if not _d2_compat._numpy_has(a)]
    path = tmp_path / "probe_real.py"
    path.write_text("import numpy as np\n"
                    "def use():\n    return np.str, np.int, np.float, np.bool, np.object\n")
    spec = importlib.util.spec_from_file_location("probe_real", str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert _d2_compat.missing_numpy_aliases(module) == ({"np": sorted(lacking)} if lacking else {})


def test_numpy_proxy_is_numpy_plus_the_aliases():
    proxy = _d2_compat.NumpyProxy({"str": str})
    assert proxy.str is str and proxy.zeros is np.zeros and proxy.ndarray is np.ndarray
    assert proxy.__name__ == "numpy"
    with pytest.raises(AttributeError):
        proxy.no_such_numpy_function


def test_voc_split_of_one_image_loads(tmp_path, monkeypatch):
    """A VOC split that lists one image loads (e.g. the demo with ``--num-test 1``).

    Without the fix: ``TypeError: iteration over a 0-d array`` (``np.loadtxt`` of one line)."""
    from detectron2.data.datasets import pascal_voc

    root = _tiny_voc(tmp_path, ["000003"], split="test")
    assert "voc_split_of_one_image" in _d2_compat.APPLIED
    dicts = pascal_voc.load_voc_instances(root, "test", ["a", "b"])
    assert [d["image_id"] for d in dicts] == ["000003"] and len(dicts[0]["annotations"]) == 2

    aliases_only = _d2_compat.NumpyProxy({a: v for a, v in _d2_compat.NUMPY_ALIASES.items()
                                          if not _d2_compat._numpy_has(a)})
    monkeypatch.setattr(pascal_voc, "np", aliases_only)
    with pytest.raises(TypeError, match="0-d array"):
        pascal_voc.load_voc_instances(root, "test", ["a", "b"])
    assert _d2_compat._voc_split_of_one_image_fails(pascal_voc)


def test_sequence_sampler_accepts_sets_reproducibly():
    a = _d2_compat._SequenceSampler(42).sample({5, 1, 9}, k=2)
    b = _d2_compat._SequenceSampler(42).sample({9, 5, 1}, k=2)
    assert a == b and set(a) <= {1, 5, 9}
    assert random.Random(42).sample([1, 5, 9], k=2) == a


def test_retinanet_head_takes_group_norm():
    """Detectron2 v0.6's RetinaNetHead probes get_norm("GN", 1), which torch refuses; FCOS's
    LazyConfig (head norm "GN") and MODEL.FCOS.NORM "GN" need it."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

    head = RetinaNetHead(input_shape=[ShapeSpec(channels=64)] * 2, num_classes=3, num_anchors=9,
                         conv_dims=[64, 64], norm="GN")
    norms = [m for m in head.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 4 and all(m.num_groups == 32 and m.num_channels == 64 for m in norms)
    logits, deltas = head([torch.randn(2, 64, 8, 8), torch.randn(2, 64, 4, 4)])
    assert logits[0].shape == (2, 27, 8, 8) and deltas[1].shape == (2, 36, 4, 4)
