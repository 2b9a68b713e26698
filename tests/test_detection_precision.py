"""The teacher's precision (DISTILL.TEACHER.PRECISION), channels-last (DISTILL.TEACHER.CHANNELS_LAST,
MODEL.CHANNELS_LAST) and the student's mixed precision on the CPU (SOLVER.AMP.ENABLED with
SOLVER.AMP.PRECISION) in the detection stage: the precision actually used inside the networks,
the teacher's outputs cast back to float32 before the losses, the refusals naming their keys, and
tools/train_net.py training and resuming exactly in bfloat16."""
import importlib.util
import os
import shutil

import pytest
import torch

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.utils.events import EventStorage
from nst_det.detection.data import register_demo_datasets
from nst_det.detection.load_config import load_nst_cfg
from nst_det.detection.trainer import DistillTrainer
from nst_det.engine.precision import bf16_support, to_channels_last
from nst_det.engine.train_loop import NonFiniteLossError, TrainLoop
from nst_det.research.demo_data import generate_demo_data

from distill_testing import registered_demo_data, save_random_teacher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDENT_NST = os.path.join(REPO, "configs", "demo", "det_student_nst.yaml")
TEACHER = os.path.join(REPO, "configs", "demo", "det_teacher.yaml")
TINY = ["INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 80, "INPUT.MIN_SIZE_TEST", 64,
        "INPUT.MAX_SIZE_TEST", 80, "INPUT.RANDOM_FLIP", "none", "MODEL.DEVICE", "cpu"]

needs_bf16 = pytest.mark.skipif(not bf16_support("cpu"),
                                reason="this CPU has no bfloat16 arithmetic (no AVX-512 or AMX)")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    with registered_demo_data(tmp_path_factory.mktemp("datasets"), 2, 1, seed=5):
        mapper = DatasetMapper(tiny_cfg(), is_train=True)
        yield [mapper(d) for d in DatasetCatalog.get("nst_demo_voc_train")]


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    return save_random_teacher(TEACHER, str(tmp_path_factory.mktemp("teacher") / "teacher.pth"))


def tiny_cfg(*opts, weights=""):
    return load_nst_cfg(STUDENT_NST, TINY + ["DISTILL.TEACHER.CONFIG", TEACHER,
                                             "DISTILL.TEACHER.WEIGHTS", weights] + list(opts))


def build(teacher_weights, *opts):
    torch.manual_seed(0)
    model = DistillTrainer.build_model(tiny_cfg(*opts, weights=teacher_weights))
    model.train()
    return model


def dtypes_inside(module):
    """The dtypes of the outputs of ``module``'s first convolution, recorded on each call."""
    seen = []
    conv = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


def what_nst_receives(model):
    """The dtypes of the (student, teacher) feature maps NST is computed on, recorded per call."""
    seen = []
    original = model.nst_per_level

    def recording(student_features, teacher_features):
        seen.append(({v.dtype for v in student_features.values()},
                     {v.dtype for v in teacher_features.values()}))
        return original(student_features, teacher_features)

    model.nst_per_level = recording
    return seen


def losses_of(model, batch, amp_dtype=None):
    with EventStorage(), torch.autocast("cpu", dtype=amp_dtype or torch.bfloat16,
                                        enabled=amp_dtype is not None):
        return model(batch)


@needs_bf16
def test_bf16_teacher_runs_in_bf16_and_gives_nst_float32(batch, teacher_weights):
    fp32 = build(teacher_weights, "DISTILL.TEACHER.PRECISION", "fp32")
    bf16 = build(teacher_weights, "DISTILL.TEACHER.PRECISION", "bf16")
    inside_fp32, inside_bf16 = dtypes_inside(fp32.teacher), dtypes_inside(bf16.teacher)
    student_inside = dtypes_inside(bf16.backbone)
    received = what_nst_receives(bf16)
    loss_fp32 = losses_of(fp32, batch)["loss_nst"]
    loss_bf16 = losses_of(bf16, batch)["loss_nst"]
    assert inside_fp32 == [torch.float32] and inside_bf16 == [torch.bfloat16]
    assert student_inside == [torch.float32]  # the student is not touched by the teacher's type
    assert received == [({torch.float32}, {torch.float32})]
    assert loss_bf16.dtype == torch.float32 and torch.isfinite(loss_bf16)
    # the same teacher in another precision: close, not the same numbers
    assert loss_bf16.item() != loss_fp32.item()
    assert abs(loss_bf16.item() - loss_fp32.item()) <= 0.02 * abs(loss_fp32.item())
    loss_bf16.backward()
    assert bf16.backbone.bottom_up.stem.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in bf16.teacher.parameters())


@needs_bf16
def test_bf16_teacher_class_logits_reach_kd_as_float32(batch, teacher_weights):
    model = build(teacher_weights, "DISTILL.TEACHER.PRECISION", "bf16", "DISTILL.KD.WEIGHT", 1.0)
    seen = []
    original = model.distillation_losses
    model.distillation_losses = lambda s, t: (seen.append(t["class_logits"].dtype),
                                              original(s, t))[1]
    losses = losses_of(model, batch)
    assert seen == [torch.float32] and torch.isfinite(losses["loss_kd"])


@needs_bf16
def test_fp32_teacher_stays_fp32_inside_the_students_bf16_step(batch, teacher_weights):
    model = build(teacher_weights, "DISTILL.TEACHER.PRECISION", "fp32")
    teacher_inside, student_inside = dtypes_inside(model.teacher), dtypes_inside(model.backbone)
    losses = losses_of(model, batch, amp_dtype=torch.bfloat16)
    assert student_inside == [torch.bfloat16] and teacher_inside == [torch.float32]
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


@needs_bf16
def test_default_teacher_runs_as_the_students_step(batch, teacher_weights):
    """DISTILL.TEACHER.PRECISION "" (the default): float32 without the student's AMP, inside its
    bfloat16 autocast with it; its outputs reach NST as float32 either way."""
    model = build(teacher_weights)
    assert model.teacher_precision == ""
    inside, received = dtypes_inside(model.teacher), what_nst_receives(model)
    losses_of(model, batch)
    losses_of(model, batch, amp_dtype=torch.bfloat16)
    assert inside == [torch.float32, torch.bfloat16]
    assert [t for _, t in received] == [{torch.float32}, {torch.float32}]


def test_channels_last_teacher_computes_the_same_features(batch, teacher_weights):
    plain = build(teacher_weights, "DISTILL.TEACHER.CHANNELS_LAST", False)
    nhwc = build(teacher_weights)  # the default: channels-last
    assert plain.teacher.backbone.bottom_up.stem.conv1.weight.is_contiguous()
    conv = nhwc.teacher.backbone.bottom_up.stem.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    student_conv = nhwc.backbone.bottom_up.stem.conv1.weight
    assert student_conv.is_contiguous()  # the student keeps its own layout (MODEL.CHANNELS_LAST)
    images = plain.preprocess_image(batch).tensor
    with torch.no_grad():
        a = plain._teacher_forward(images)["features"]
        b = nhwc._teacher_forward(images)["features"]
    assert_same_up_to_rounding(a, b)


def assert_same_up_to_rounding(a, b):
    """Feature maps {name: tensor} equal up to float32 rounding (1e-5 of each map's largest value)."""
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4,
                                   atol=1e-5 * a[name].abs().max().item())


@pytest.fixture(scope="module")
def teacher_with_statistics(tmp_path_factory):
    """Weights of a random teacher whose frozen norms are far from the identity (random means,
    variances, scales and shifts), so a fold that drops or misplaces one term shows."""
    path = save_random_teacher(TEACHER, str(tmp_path_factory.mktemp("teacher") / "teacher.pth"))
    state = torch.load(path)["model"]
    generator = torch.Generator().manual_seed(3)
    for key, value in state.items():
        if "norm" in key and key.rsplit(".", 1)[-1] in ("running_mean", "weight", "bias"):
            state[key] = torch.empty_like(value).uniform_(-1, 1, generator=generator) + \
                (1.0 if key.endswith("weight") else 0.0)
        elif "norm" in key and key.endswith("running_var"):
            state[key] = torch.empty_like(value).uniform_(0.25, 4, generator=generator)
    torch.save({"model": state}, path)
    return path


def frozen_norms_in_convs(module):
    """Detectron2 Conv2d's with a norm (the demo's: BatchNorm2d, frozen in eval mode)."""
    return sum(1 for m in module.modules()
               if isinstance(m, torch.nn.Conv2d) and getattr(m, "norm", None) is not None)


def test_folded_teacher_computes_the_same_features(batch, teacher_with_statistics):
    """DISTILL.TEACHER.FOLD_NORMS (the default): every norm of the teacher's convolutions (the
    demo teacher's BatchNorm2d in eval mode) is folded into them, and the teacher computes what it did (float32 rounding)."""
    plain = build(teacher_with_statistics, "DISTILL.TEACHER.FOLD_NORMS", False,
                  "DISTILL.TEACHER.CHANNELS_LAST", False)
    folded = build(teacher_with_statistics, "DISTILL.TEACHER.CHANNELS_LAST", False)
    assert frozen_norms_in_convs(plain.teacher) > 20 and frozen_norms_in_convs(folded.teacher) == 0
    assert frozen_norms_in_convs(folded.backbone) == frozen_norms_in_convs(plain.backbone) > 0
    images = plain.preprocess_image(batch).tensor
    with torch.no_grad():
        a = plain._teacher_forward(images)["features"]
        b = folded._teacher_forward(images)["features"]
    assert_same_up_to_rounding(a, b)
    # the channels-last teacher folds the same and stays channels-last
    nhwc = build(teacher_with_statistics)
    conv = nhwc.teacher.backbone.bottom_up.stem.conv1
    assert conv.norm is None and conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert_same_up_to_rounding(a, nhwc._teacher_forward(images)["features"])


def test_a_fold_without_the_running_mean_is_caught(batch, teacher_with_statistics, monkeypatch):
    """The broken variant the comparison above catches: folding that ignores running_mean."""
    import nst_det.engine.frozen as frozen
    plain = build(teacher_with_statistics, "DISTILL.TEACHER.FOLD_NORMS", False)
    original = frozen._fold

    def without_mean(conv, norm):
        norm.running_mean.zero_()
        original(conv, norm)

    monkeypatch.setattr(frozen, "_fold", without_mean)
    broken = build(teacher_with_statistics)
    images = plain.preprocess_image(batch).tensor
    with torch.no_grad(), pytest.raises(AssertionError):
        assert_same_up_to_rounding(plain._teacher_forward(images)["features"],
                                   broken._teacher_forward(images)["features"])


def test_student_channels_last_leaves_the_teacher_alone(teacher_weights):
    model = build(teacher_weights, "MODEL.CHANNELS_LAST", True,
                  "DISTILL.TEACHER.CHANNELS_LAST", False)
    assert model.backbone.bottom_up.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.teacher.backbone.bottom_up.stem.conv1.weight.is_contiguous()
    assert not build(teacher_weights).backbone.bottom_up.stem.conv1.weight.is_contiguous(
        memory_format=torch.channels_last)  # MODEL.CHANNELS_LAST False: the student stays NCHW
    assert to_channels_last(model) is model


def test_fp16_teacher_on_the_cpu_is_refused_naming_the_key(teacher_weights):
    with pytest.raises(ValueError, match=r"DISTILL\.TEACHER\.PRECISION is 'fp16'.*'cpu'"):
        build(teacher_weights, "DISTILL.TEACHER.PRECISION", "fp16")


def test_unknown_teacher_precision_is_refused_when_the_config_loads():
    with pytest.raises(ValueError, match=r"DISTILL\.TEACHER\.PRECISION is 'half'"):
        tiny_cfg("DISTILL.TEACHER.PRECISION", "half")


def test_bf16_is_refused_where_the_cpu_lacks_it(teacher_weights, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"DISTILL\.TEACHER\.PRECISION is 'bf16'.*no bfloat16"):
        build(teacher_weights, "DISTILL.TEACHER.PRECISION", "bf16")


# ------------------------------------------------------------------------------------------------
# the student in bfloat16 on the CPU: TrainLoop, then tools/train_net.py
# ------------------------------------------------------------------------------------------------
class _Toy(torch.nn.Module):
    def __init__(self, loss_value=None):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.loss_value = loss_value
        self.seen = []

    def forward(self, x):
        y = self.conv(x)
        self.seen.append(y.dtype)
        loss = y.float().pow(2).mean()
        return {"loss": loss if self.loss_value is None else loss * self.loss_value}


@needs_bf16
def test_train_loop_steps_in_bf16_without_a_grad_scaler():
    model = _Toy()
    before = model.conv.weight.detach().clone()
    loop = TrainLoop(model, [torch.randn(2, 3, 8, 8)] * 2, torch.optim.SGD(model.parameters(), 0.1),
                     amp_dtype=torch.bfloat16, device_type="cpu")
    with EventStorage():
        loop.iter = 0
        loop.run_step()
    assert model.seen == [torch.bfloat16] and loop.grad_scaler is None
    assert "grad_scaler" not in loop.state_dict()
    assert not torch.equal(before, model.conv.weight)


@needs_bf16
def test_train_loop_in_bf16_still_stops_at_a_non_finite_loss():
    model = _Toy(loss_value=float("inf"))
    before = model.conv.weight.detach().clone()
    loop = TrainLoop(model, [torch.randn(2, 3, 8, 8)], torch.optim.SGD(model.parameters(), 0.1),
                     amp_dtype=torch.bfloat16, device_type="cpu")
    with EventStorage(), pytest.raises(NonFiniteLossError, match="loss = inf"):
        loop.iter = 0
        loop.run_step()
    assert torch.equal(before, model.conv.weight)


def _load_train_net():
    spec = importlib.util.spec_from_file_location("train_net_precision",
                                                  os.path.join(REPO, "tools", "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRAIN = TINY + ["SOLVER.IMS_PER_BATCH", 2, "SOLVER.WARMUP_ITERS", 2, "SOLVER.MAX_ITER", 4,
                "SOLVER.CHECKPOINT_PERIOD", 2, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
                "MODEL.RPN.POST_NMS_TOPK_TRAIN", 30, "DATASETS.TRAIN", "('nst_demo_voc_train',)",
                "DATASETS.TEST", "()", "SOLVER.AMP.ENABLED", True,
                "DISTILL.TEACHER.PRECISION", "bf16", "DISTILL.TEACHER.CHANNELS_LAST", True]


@needs_bf16
def test_train_net_trains_in_bf16_and_resumes_exactly(tmp_path, teacher_weights):
    train_net = _load_train_net()
    generate_demo_data(str(tmp_path / "datasets" / "demo_det"), num_train=4, num_val=0,
                       num_test=1, seed=2, height=64, width=80)
    register_demo_datasets(str(tmp_path / "datasets"))
    seen = []
    original = TrainLoop.run_step

    def recording(self):
        seen.append(self.amp_dtype)
        return original(self)

    def run(out, *flags):
        argv = ["--config-file", STUDENT_NST, *flags,
                *[str(o) for o in TRAIN + ["DISTILL.TEACHER.WEIGHTS", teacher_weights,
                                           "OUTPUT_DIR", str(out)]]]
        return train_net.main(train_net.argument_parser().parse_args(argv))

    try:
        TrainLoop.run_step = recording
        run(tmp_path / "full")
        cut = tmp_path / "cut"
        cut.mkdir()
        shutil.copy(tmp_path / "full" / "model_0000001.pth", cut)
        (cut / "last_checkpoint").write_text("model_0000001.pth")
        run(cut, "--resume")
    finally:
        TrainLoop.run_step = original
        register_demo_datasets()
    assert seen and set(seen) == {torch.bfloat16}
    full = torch.load(tmp_path / "full" / "model_final.pth", weights_only=False)
    resumed = torch.load(cut / "model_final.pth", weights_only=False)
    assert full["model"].keys() == resumed["model"].keys()
    for key in full["model"]:
        assert torch.equal(full["model"][key], resumed["model"][key]), key


def test_amp_fp16_on_the_cpu_is_refused_naming_the_key(tmp_path, teacher_weights):
    cfg = tiny_cfg("SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", "fp16",
                   "OUTPUT_DIR", str(tmp_path), weights=teacher_weights)
    with registered_demo_data(tmp_path / "datasets", 2, 1, seed=5):
        with pytest.raises(ValueError, match=r"SOLVER\.AMP\.PRECISION is 'fp16'.*'cpu'"):
            DistillTrainer(cfg)

