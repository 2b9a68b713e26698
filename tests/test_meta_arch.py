"""Tests of nst_det/detection/meta_arch.py and teacher.py: DistillGeneralizedRCNN with a frozen
teacher, on the CPU with tiny generated images."""
import copy
import os
import re

import pytest
import torch

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.utils.events import EventStorage
from nst_det.detection.load_config import load_nst_cfg, student_cfg
from nst_det.detection.teacher import build_teacher_model
from nst_det.detection.meta_arch import DistillGeneralizedRCNN
from nst_det.engine.checkpointer import WeightsMismatchError

from distill_testing import registered_demo_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDENT_NST = os.path.join(REPO, "configs", "demo", "det_student_nst.yaml")
TEACHER = os.path.join(REPO, "configs", "demo", "det_teacher.yaml")
TINY = ["INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 80, "INPUT.MIN_SIZE_TEST", 64,
        "INPUT.MAX_SIZE_TEST", 80, "INPUT.RANDOM_FLIP", "none"]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A fixed training batch of two generated 64 x 80 images with their boxes."""
    with registered_demo_data(tmp_path_factory.mktemp("datasets"), 2, 1, seed=5):
        cfg = tiny_cfg()
        mapper = DatasetMapper(cfg, is_train=True)
        yield [mapper(d) for d in DatasetCatalog.get("nst_demo_voc_train")]


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    """Weights of the demo teacher (random init: the mechanics need no trained teacher)."""
    torch.manual_seed(0)
    teacher = build_teacher_model(TEACHER)
    out = tmp_path_factory.mktemp("teacher")
    DetectionCheckpointer(teacher, str(out)).save("teacher")
    return str(out / "teacher.pth")


def tiny_cfg(*opts, config=STUDENT_NST, weights=""):
    return load_nst_cfg(config, TINY + ["DISTILL.TEACHER.CONFIG", TEACHER,
                                        "DISTILL.TEACHER.WEIGHTS", weights] + list(opts))


def build(teacher_weights, *opts):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(*opts, weights=teacher_weights))
    model.train()
    return model


def naive_poly_mmd2(student, teacher):
    """MMD^2 with k(x, y) = (x^T y)^2 of spatially L2-normalised channel maps, float64, per image
    then averaged: [N, C_S, H, W], [N, C_T, H, W] -> scalar."""
    total = 0.0
    for s, t in zip(student.double(), teacher.double()):
        s, t = s.flatten(1), t.flatten(1)
        s = s / (s.pow(2).sum(1, keepdim=True) + 1e-10).sqrt()
        t = t / (t.pow(2).sum(1, keepdim=True) + 1e-10).sqrt()
        k = lambda a, b: (a @ b.T).pow(2).mean()  # noqa: E731
        total = total + k(t, t) + k(s, s) - 2 * k(t, s)
    return total / student.shape[0]


@pytest.fixture(scope="module")
def trained(batch, teacher_weights):
    """Six SGD steps on the fixed batch; the teacher's parameters before and after."""
    model = build(teacher_weights)
    teacher_before = copy.deepcopy(model.teacher.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    history = []
    with EventStorage() as storage:
        for _ in range(6):
            losses = model(batch)
            history.append({k: v.item() for k, v in losses.items()})
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            storage.step()
        scalars = storage.latest()
    return model, history, teacher_before, scalars


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
def test_training_adds_a_finite_falling_loss_nst(trained):
    _, history, _, _ = trained
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc", "loss_nst"} <= set(history[0])
    nst = [h["loss_nst"] for h in history]
    assert all(torch.isfinite(torch.tensor(nst))) and nst[0] > 0
    assert nst[-1] < 0.8 * nst[0], nst


def test_teacher_gets_no_gradient_and_does_not_change(trained):
    model, _, before, _ = trained
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.parameters())
    after = model.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.teacher.training


def test_each_level_is_logged_in_the_event_storage(trained):
    _, _, _, scalars = trained
    for level in ("p2", "p3", "p4", "p5", "p6"):
        value, _ = scalars[f"nst/{level}"]
        assert value > 0


def test_loss_nst_is_the_weighted_sum_of_naive_mmd2_per_level(batch, teacher_weights):
    model = build(teacher_weights, "DISTILL.LEVEL_WEIGHTS", [1.0, 0.5, 2.0, 0.0, 1.0],
                  "DISTILL.NST.WEIGHT", 3.0)
    images = model.preprocess_image(batch)
    with torch.no_grad():
        student = model.backbone(images.tensor)
        teacher = model.teacher.backbone(model.teacher_images(batch, images.tensor))
        with EventStorage():
            loss = model(batch)["loss_nst"]
    expected = 3.0 * sum(w * naive_poly_mmd2(student[f], teacher[f])
                         for w, f in zip([1.0, 0.5, 2.0, 0.0, 1.0], ["p2", "p3", "p4", "p5", "p6"]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_bottom_up_stages_can_be_matched(batch, teacher_weights):
    model = build(teacher_weights, "DISTILL.STUDENT_FEATURES", ["res3", "res5"],
                  "DISTILL.TEACHER_FEATURES", ["res3", "res5"],
                  "DISTILL.LEVEL_WEIGHTS", [1.0, 1.0])
    calls = _count_calls(model.teacher, ["proposal_generator", "roi_heads", "backbone"])
    with EventStorage():
        losses = model(batch)
    assert losses["loss_nst"] > 0
    assert calls == {"proposal_generator": 0, "roi_heads": 0, "backbone": 0}  # bottom-up only


def test_warmup_scales_the_distillation_weight(batch, teacher_weights):
    model = build(teacher_weights, "DISTILL.WARMUP_ITERS", 10)
    values = {}
    with torch.no_grad():
        for it in (0, 4, 9, 30):
            with EventStorage(start_iter=it):
                values[it] = model(batch)["loss_nst"].item()
    # min(1, (iteration + 1) / WARMUP_ITERS), the formula of both stages (nst_det.engine.warmup)
    assert values[0] == pytest.approx(0.1 * values[9], rel=1e-5)
    assert values[4] == pytest.approx(0.5 * values[9], rel=1e-5)
    assert values[30] == pytest.approx(values[9], rel=1e-5)


def test_kd_on_roi_logits_runs_the_teacher_box_head_on_student_proposals(batch, teacher_weights):
    model = build(teacher_weights, "DISTILL.KD.WEIGHT", 1.0)
    calls = _count_calls(model.teacher, ["proposal_generator", "roi_heads.box_head"])
    seen = []
    model.teacher.roi_heads.box_pooler.register_forward_pre_hook(
        lambda m, args: seen.append(sum(len(b) for b in args[1])))
    with EventStorage():
        losses = model(batch)
    assert torch.isfinite(losses["loss_kd"]) and losses["loss_kd"] > 0
    assert calls == {"proposal_generator": 0, "roi_heads.box_head": 1}
    rois = 2 * model.roi_heads.batch_size_per_image  # the student's sampled proposals
    assert seen and seen[0] <= rois
    losses["loss_kd"].backward()
    assert model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0


def _count_calls(module, names):
    counts = dict.fromkeys(names, 0)
    for name in names:
        sub = module.get_submodule(name)
        sub.register_forward_pre_hook(lambda m, a, name=name: counts.__setitem__(name, counts[name] + 1))
    return counts


# ------------------------------------------------------------------------------------------------
# inference, checkpoints, devices
# ------------------------------------------------------------------------------------------------
def test_inference_never_calls_the_teacher(batch, teacher_weights):
    model = build(teacher_weights)
    model.eval()

    def forbidden(*args, **kwargs):
        raise AssertionError("the teacher ran in inference")

    model.teacher.forward = forbidden
    model.teacher.backbone.forward = forbidden
    model.teacher.backbone.bottom_up.forward = forbidden
    with torch.no_grad():
        outputs = model([{k: v for k, v in x.items() if k != "instances"} for x in batch])
    assert len(outputs) == 2 and "instances" in outputs[0]


def test_student_checkpoint_has_no_teacher_keys_and_loads_into_a_plain_rcnn(trained, tmp_path):
    model = trained[0]
    DetectionCheckpointer(model, str(tmp_path)).save("student")
    saved = torch.load(str(tmp_path / "student.pth"), weights_only=False)["model"]
    plain = build_model(student_cfg(tiny_cfg()))
    assert type(plain) is GeneralizedRCNN
    assert set(saved) == set(plain.state_dict())
    assert not any("teacher" in k for k in saved)
    plain.load_state_dict(saved, strict=True)
    params = {id(p) for p in model.parameters()}
    assert not params & {id(p) for p in model.teacher.parameters()}
    assert len(params) == len(list(plain.parameters()))


def test_teacher_follows_the_student_to_another_dtype(teacher_weights):
    model = build(teacher_weights)
    model.double()
    assert next(model.teacher.parameters()).dtype == torch.float64
    assert model.teacher.pixel_mean.dtype == torch.float64


# ------------------------------------------------------------------------------------------------
# the teacher's input
# ------------------------------------------------------------------------------------------------
def _teacher_variant(tmp_path, body):
    path = tmp_path / "teacher_variant.yaml"
    path.write_text(f'_BASE_: "{TEACHER}"\n{body}')
    return str(path)


def test_same_normalisation_gives_the_teacher_the_student_batch(batch, teacher_weights):
    model = build(teacher_weights)
    images = model.preprocess_image(batch).tensor
    assert model.teacher_images(batch, images) is images


def test_other_pixel_mean_and_std_renormalise_the_raw_images(batch, teacher_weights, tmp_path):
    variant = _teacher_variant(tmp_path, "MODEL:\n  PIXEL_MEAN: [100.0, 110.0, 120.0]\n"
                                         "  PIXEL_STD: [1.0, 2.0, 4.0]\n")
    model = build(teacher_weights, "DISTILL.TEACHER.CONFIG", variant)
    images = model.preprocess_image(batch).tensor
    got = model.teacher_images(batch, images)
    assert got.shape == images.shape
    mean = torch.tensor([100.0, 110.0, 120.0]).view(3, 1, 1)
    std = torch.tensor([1.0, 2.0, 4.0]).view(3, 1, 1)
    for i, x in enumerate(batch):
        h, w = x["image"].shape[1:]
        assert torch.allclose(got[i, :, :h, :w], (x["image"].float() - mean) / std)
        assert not got[i, :, h:, :].any() and not got[i, :, :, w:].any()  # zero padding


def test_other_input_format_swaps_the_channels(batch, teacher_weights, tmp_path):
    variant = _teacher_variant(tmp_path, "INPUT:\n  FORMAT: 'RGB'\n")
    model = build(teacher_weights, "DISTILL.TEACHER.CONFIG", variant)
    got = model.teacher_images(batch, model.preprocess_image(batch).tensor)
    x = batch[0]["image"].float().flip(0)  # BGR -> RGB
    h, w = x.shape[1:]
    expected = (x - model.teacher.pixel_mean) / model.teacher.pixel_std
    assert torch.allclose(got[0, :, :h, :w], expected)


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------
def test_missing_teacher_weights_name_the_file(tmp_path):
    missing = str(tmp_path / "no_teacher.pth")
    with pytest.raises(FileNotFoundError, match=r"no_teacher\.pth.*DISTILL\.TEACHER\.WEIGHTS"):
        build(missing)
    with pytest.raises(ValueError, match=r"DISTILL\.TEACHER\.WEIGHTS is empty"):
        build("")


def test_teacher_weights_of_another_architecture_are_refused(tmp_path):
    student = build_model(student_cfg(tiny_cfg()))  # narrower than the teacher
    DetectionCheckpointer(student, str(tmp_path)).save("student")
    path = str(tmp_path / "student.pth")
    with pytest.raises(WeightsMismatchError) as info:
        build(path)
    message = str(info.value)
    assert "student.pth" in message
    assert re.search(r"wrongly shaped keys \d+: backbone\.\S+ \(file \(\d+, ", message), message


def test_teacher_weights_with_missing_keys_are_refused(teacher_weights, tmp_path):
    checkpoint = torch.load(teacher_weights, weights_only=False)
    checkpoint["model"] = {k: v for k, v in checkpoint["model"].items() if "roi_heads" not in k}
    checkpoint["model"]["extra.weight"] = torch.zeros(1)
    path = str(tmp_path / "partial.pth")
    torch.save(checkpoint, path)
    with pytest.raises(WeightsMismatchError, match=r"partial\.pth.*missing keys \d+: roi_heads.*"
                                                  r"unexpected keys 1: extra\.weight"):
        build(path)


def test_unknown_feature_name_lists_the_available_ones(teacher_weights):
    with pytest.raises(ValueError, match=r"STUDENT_FEATURES.*\['p7'\].*available: \[.*'p2'.*'res5'"):
        build(teacher_weights, "DISTILL.STUDENT_FEATURES", ["p2", "p7"],
              "DISTILL.TEACHER_FEATURES", ["p2", "p3"], "DISTILL.LEVEL_WEIGHTS", [1.0, 1.0])
    with pytest.raises(ValueError, match=r"TEACHER_FEATURES.*\['c4'\]"):
        build(teacher_weights, "DISTILL.STUDENT_FEATURES", ["p2"],
              "DISTILL.TEACHER_FEATURES", ["c4"], "DISTILL.LEVEL_WEIGHTS", [1.0])


def test_empty_feature_lists_match_every_output_both_backbones_have(batch, teacher_weights):
    """DISTILL.STUDENT_FEATURES [] = every backbone output the teacher also has (here p2-p6),
    TEACHER_FEATURES [] = the same names, LEVEL_WEIGHTS [] = 1.0 each."""
    model = build(teacher_weights, "DISTILL.STUDENT_FEATURES", [], "DISTILL.TEACHER_FEATURES", [],
                  "DISTILL.LEVEL_WEIGHTS", [])
    assert model.student_features == model.teacher_features == ["p2", "p3", "p4", "p5", "p6"]
    assert model.level_weights == [1.0] * 5
    with EventStorage():
        losses = model(batch)
    assert torch.isfinite(losses["loss_nst"]) and losses["loss_nst"] > 0


def test_levels_of_different_stride_are_refused_at_build(teacher_weights):
    with pytest.raises(ValueError, match=r"student feature 'p3' has stride 8 but teacher feature 'p4' has stride 16"):
        build(teacher_weights, "DISTILL.STUDENT_FEATURES", ["p3"],
              "DISTILL.TEACHER_FEATURES", ["p4"], "DISTILL.LEVEL_WEIGHTS", [1.0])


@pytest.mark.parametrize("resize", ["student_to_teacher", "teacher_to_student"])
def test_levels_of_different_stride_train_with_an_explicit_resize(batch, teacher_weights, resize):
    """DISTILL.RESIZE: the student's p3 (stride 8) against the teacher's p4 (stride 16) gives the
    float64 MMD^2 of the pair after resizing one map to the other's size."""
    import torch.nn.functional as F

    model = build(teacher_weights, "DISTILL.STUDENT_FEATURES", ["p3"], "DISTILL.TEACHER_FEATURES",
                  ["p4"], "DISTILL.LEVEL_WEIGHTS", [1.0], "DISTILL.RESIZE", resize)
    store = {}
    model.backbone.register_forward_hook(lambda m, a, out: store.__setitem__("s", out["p3"]))
    model.teacher.backbone.register_forward_hook(lambda m, a, out: store.__setitem__("t", out["p4"]))
    with EventStorage():
        losses = model(batch)
    s, t = store["s"].detach().double(), store["t"].double()
    assert s.shape[-1] == 2 * t.shape[-1]  # really different sizes
    if resize == "student_to_teacher":
        s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
    else:
        t = F.interpolate(t, size=s.shape[-2:], mode="bilinear", align_corners=False)
    expected = model.nst_weight * naive_poly_mmd2(s, t)
    assert losses["loss_nst"].item() == pytest.approx(float(expected), rel=1e-4)
    losses["loss_nst"].backward()
    assert model.backbone.fpn_output3.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())


def test_student_fpn_narrower_than_the_teacher_needs_no_adapter(batch, teacher_weights):
    """NST compares distributions of channel maps: 32 student channels against 96 teacher channels."""
    model = build(teacher_weights, "MODEL.FPN.OUT_CHANNELS", 32)
    assert model.backbone.output_shape()["p2"].channels == 32
    assert model.teacher.backbone.output_shape()["p2"].channels == 96
    assert not any("adapter" in k or "connector" in k for k in model.state_dict())
    with EventStorage():
        losses = model(batch)
    assert torch.isfinite(losses["loss_nst"]) and losses["loss_nst"] > 0
    losses["loss_nst"].backward()
    assert model.backbone.fpn_output2.weight.grad.abs().sum() > 0


def test_unknown_resize_choice_is_refused_naming_the_key(teacher_weights):
    with pytest.raises(ValueError, match=r"DISTILL\.RESIZE is 'bilinear': it must be one of"):
        build(teacher_weights, "DISTILL.RESIZE", "bilinear")


def test_levels_of_different_size_are_refused_in_forward(teacher_weights):
    model = build(teacher_weights)
    student = {f: torch.rand(2, 64, 8, 10) for f in model.student_features}
    teacher = {f: torch.rand(2, 128, 8, 10) for f in model.teacher_features}
    teacher["p4"] = torch.rand(2, 128, 4, 5)
    with pytest.raises(ValueError, match=r"student feature 'p4' is \(2, 64, 8, 10\) but teacher "
                                         r"feature 'p4' is \(2, 128, 4, 5\)"):
        model.nst_per_level(student, teacher)


def test_inconsistent_distill_lists_and_kernels_are_refused(teacher_weights):
    with pytest.raises(ValueError, match="must name the same number of features"):
        build(teacher_weights, "DISTILL.TEACHER_FEATURES", ["p2"])
    with pytest.raises(ValueError, match="LEVEL_WEIGHTS"):
        build(teacher_weights, "DISTILL.LEVEL_WEIGHTS", [1.0])
    with pytest.raises(ValueError, match="DISTILL.NST.*kernel"):
        build(teacher_weights, "DISTILL.NST.KERNEL", "cubic")


def test_a_distillation_config_cannot_be_a_teacher(teacher_weights):
    with pytest.raises(ValueError, match="plain detector"):
        build(teacher_weights, "DISTILL.TEACHER.CONFIG", STUDENT_NST)


# ------------------------------------------------------------------------------------------------
# the real VOC configs: teacher and student fit together
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["voc_frcnn_nst.yaml", "voc_frcnn_R18_nst.yaml"])
def test_voc_student_and_r101_teacher_match(name):
    cfg = load_nst_cfg(os.path.join(REPO, "configs", name), ["MODEL.DEVICE", "cpu"])
    teacher = build_teacher_model(cfg.DISTILL.TEACHER.CONFIG)
    student_args = GeneralizedRCNN.from_config(student_cfg(cfg))
    d = cfg.DISTILL
    model = DistillGeneralizedRCNN(
        teacher=teacher, student_features=d.STUDENT_FEATURES, teacher_features=d.TEACHER_FEATURES,
        level_weights=d.LEVEL_WEIGHTS, nst_weight=d.NST.WEIGHT, **student_args)
    assert model.input_format == "RGB" and model.teacher.input_format == "BGR"
    image = torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)
    batch = [{"image": image}]
    images = model.preprocess_image(batch).tensor
    teacher_input = model.teacher_images(batch, images)
    expected = image.float().flip(0) - torch.tensor([103.530, 116.280, 123.675]).view(3, 1, 1)
    assert torch.allclose(teacher_input[0, :, :64, :96], expected)
