"""Reduced precision in the classification stage, on the CPU: the teacher's precision
(DISTILL.TEACHER.PRECISION: its forward in bfloat16, what it gives the losses in float32), the
student's SOLVER.AMP on any device (bfloat16 on the CPU, no grad scaler), channels-last networks,
and the precisions a device cannot run refused with an error naming the key, before any data is
read."""
import itertools

import pytest
import torch
from detectron2.utils.events import EventStorage
from torch import nn

from cls_testing import PatternDataset, save_teacher, tiny_cfg

import nst_det.classification.trainer as cls_trainer
import nst_det.engine.precision
import nst_det.losses
from nst_det.classification.config import get_cls_config, load_cls_config
from nst_det.classification.distill import distillation_losses
from nst_det.classification.trainer import ClsTrainer
from nst_det.engine.precision import bf16_support

needs_bf16 = pytest.mark.skipif(not bf16_support("cpu"),
                                reason="this CPU has no bfloat16 arithmetic (AVX-512 or AMX)")


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher"))


def _cfg(tmp_path, teacher_file, teacher_precision="fp32", amp=False, amp_precision=""):
    cfg = tiny_cfg(tmp_path, teacher_file, nst_weight=50.0, kd_weight=1.0)
    cfg.DISTILL.TEACHER.PRECISION = teacher_precision
    cfg.SOLVER.AMP = amp
    cfg.SOLVER.AMP_PRECISION = amp_precision
    return cfg


def _trainer(cfg):
    return ClsTrainer(cfg, PatternDataset(8), PatternDataset(8, seed=1))


def _conv_output_dtypes(module):
    """A list that every Conv2d inside ``module`` appends its output dtype to."""
    seen = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    return seen


def _step(trainer):
    """One training step on the first batch; returns the loss terms the loop wrote."""
    loop = trainer._trainer
    loop.data_stream = itertools.repeat(next(iter(loop.data_loader)))
    with EventStorage(0) as storage:
        loop.iter = 0
        loop.run_step()
        return {k: h.latest() for k, h in storage.histories().items() if k.startswith("loss_")}


def _record_loss_inputs(monkeypatch):
    """{"nst": [teacher feature dtypes], "kd": [teacher logit dtypes]} that the losses receive."""
    seen = {"nst": [], "kd": []}
    nst_loss, kd_loss = nst_det.losses.nst_loss, nst_det.losses.kd_loss

    def nst(s, t, **kw):
        seen["nst"].append(t.dtype)
        return nst_loss(s, t, **kw)

    def kd(s, t, **kw):
        seen["kd"].append(t.dtype)
        return kd_loss(s, t, **kw)

    monkeypatch.setattr(nst_det.losses, "nst_loss", nst)
    monkeypatch.setattr(nst_det.losses, "kd_loss", kd)
    return seen


@needs_bf16
def test_bf16_teacher_runs_in_bfloat16_and_gives_the_losses_float32(tmp_path, teacher_file,
                                                                    monkeypatch):
    trainer = _trainer(_cfg(tmp_path, teacher_file, "bf16"))
    assert trainer.teacher.dtype == torch.bfloat16
    inside_teacher = _conv_output_dtypes(trainer.teacher)
    inside_student = _conv_output_dtypes(trainer.student)
    to_losses = _record_loss_inputs(monkeypatch)
    losses = _step(trainer)
    assert inside_teacher and set(inside_teacher) == {torch.bfloat16}
    assert inside_student and set(inside_student) == {torch.float32}  # the student: no AMP
    assert to_losses == {"nst": [torch.float32], "kd": [torch.float32]}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses


@needs_bf16
def test_bf16_teacher_loss_is_close_to_the_fp32_one_but_not_identical(tmp_path, teacher_file):
    trainers = {p: _trainer(_cfg(tmp_path / p, teacher_file, p)) for p in ("fp32", "bf16")}
    student = trainers["fp32"].student.state_dict()
    assert all(torch.equal(v, trainers["bf16"].student.state_dict()[k]) for k, v in student.items())
    images, targets = next(iter(trainers["fp32"]._trainer.data_loader))
    losses = {}
    for precision, trainer in trainers.items():
        with torch.no_grad():
            losses[precision] = {k: v.item() for k, v in distillation_losses(
                trainer.student, trainer.teacher, images, targets).items()}
    fp32, bf16 = losses["fp32"], losses["bf16"]
    assert fp32["loss_cls"] == bf16["loss_cls"]  # the student is the same
    for term in ("loss_nst", "loss_kd"):
        assert bf16[term] == pytest.approx(fp32[term], rel=0.05), term
    assert (bf16["loss_nst"], bf16["loss_kd"]) != (fp32["loss_nst"], fp32["loss_kd"])


@needs_bf16
def test_fp32_teacher_stays_float32_under_the_students_amp(tmp_path, teacher_file, monkeypatch):
    trainer = _trainer(_cfg(tmp_path, teacher_file, "fp32", amp=True))
    inside_teacher = _conv_output_dtypes(trainer.teacher)
    inside_student = _conv_output_dtypes(trainer.student)
    to_losses = _record_loss_inputs(monkeypatch)
    _step(trainer)
    assert set(inside_teacher) == {torch.float32}
    assert set(inside_student) == {torch.bfloat16}
    assert to_losses == {"nst": [torch.float32], "kd": [torch.float32]}


@needs_bf16
def test_default_teacher_runs_as_the_students_step(tmp_path, teacher_file, monkeypatch):
    """DISTILL.TEACHER.PRECISION "" (the default): inside the student's bfloat16 autocast under
    SOLVER.AMP, float32 without it; the losses get float32 either way."""
    assert get_cls_config().DISTILL.TEACHER.PRECISION == ""
    seen = {}
    for amp in (False, True):
        trainer = _trainer(_cfg(tmp_path / str(amp), teacher_file, "", amp=amp))
        inside_teacher = _conv_output_dtypes(trainer.teacher)
        to_losses = _record_loss_inputs(monkeypatch)
        _step(trainer)
        seen[amp] = set(inside_teacher), {k: set(v) for k, v in to_losses.items()}
    assert seen[False] == ({torch.float32}, {"nst": {torch.float32}, "kd": {torch.float32}})
    assert seen[True] == ({torch.bfloat16}, {"nst": {torch.float32}, "kd": {torch.float32}})


def _no_data(*args, **kwargs):
    raise AssertionError("a data set was built before the precision was checked")


def test_fp16_teacher_on_the_cpu_is_refused_naming_the_key_before_any_data(tmp_path, teacher_file,
                                                                          monkeypatch):
    monkeypatch.setattr(cls_trainer, "build_cls_dataset", _no_data)
    with pytest.raises(ValueError, match=r"DISTILL.TEACHER.PRECISION is 'fp16' but the device is "
                                         r"'cpu': float16 autocast is for CUDA"):
        ClsTrainer(_cfg(tmp_path, teacher_file, "fp16"))


def test_fp16_student_amp_on_the_cpu_is_refused_naming_the_key_before_any_data(
        tmp_path, teacher_file, monkeypatch):
    monkeypatch.setattr(cls_trainer, "build_cls_dataset", _no_data)
    with pytest.raises(ValueError, match=r"SOLVER.AMP_PRECISION is 'fp16' but the device is 'cpu'"):
        ClsTrainer(_cfg(tmp_path, teacher_file, amp=True, amp_precision="fp16"))


@pytest.mark.parametrize("key, value", [("DISTILL.TEACHER.PRECISION", "fp8"),
                                        ("DISTILL.TEACHER.PRECISION", "bfloat16"),
                                        ("SOLVER.AMP_PRECISION", "fp8"),
                                        ("SOLVER.AMP_PRECISION", "fp32")])
def test_unknown_precision_names_are_refused_at_config_load(key, value):
    with pytest.raises(ValueError, match=f"{key} is '{value}': it must be one of"):
        load_cls_config("", [key, value])


def test_fp16_teacher_is_not_checked_when_no_teacher_is_built(tmp_path, teacher_file):
    """Evaluating the student alone builds no teacher: its precision is not read."""
    cfg = _cfg(tmp_path, teacher_file, "fp16")
    trainer = ClsTrainer(cfg, val_set=PatternDataset(8, seed=1), eval_only=True)
    assert trainer.teacher is None


@needs_bf16
@pytest.mark.parametrize("amp_precision", ["", "bf16"])
def test_student_amp_on_the_cpu_trains_in_bfloat16_without_a_grad_scaler(
        tmp_path, teacher_file, amp_precision):
    trainer = _trainer(_cfg(tmp_path, teacher_file, amp=True, amp_precision=amp_precision))
    assert trainer.amp_dtype == torch.bfloat16 and trainer._trainer.grad_scaler is None
    inside_student = _conv_output_dtypes(trainer.student)
    before = [p.detach().clone() for p in trainer.student.parameters()]
    losses = _step(trainer)
    assert inside_student and set(inside_student) == {torch.bfloat16}
    assert set(losses) == {"loss_cls", "loss_nst", "loss_kd"}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.student.parameters()))
    assert all(p.dtype == torch.float32 for p in trainer.student.parameters())  # master weights
    assert "grad_scaler" not in trainer._trainer.state_dict()
    # evaluation under the same autocast
    del inside_student[:]
    trainer.evaluate()
    assert inside_student and set(inside_student) == {torch.bfloat16}


@needs_bf16
def test_channels_last_teacher_and_student_train(tmp_path, teacher_file):
    cfg = _cfg(tmp_path, teacher_file, "bf16", amp=True)
    cfg.DISTILL.TEACHER.CHANNELS_LAST = True
    cfg.MODEL.STUDENT.CHANNELS_LAST = True
    trainer = _trainer(cfg)
    for net in (trainer.teacher, trainer.student):
        weights = [m.weight for m in net.modules() if isinstance(m, nn.Conv2d)]
        assert weights and all(w.is_contiguous(memory_format=torch.channels_last)
                               for w in weights)
    # the optimizer holds the student's parameters themselves, not stale copies
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in trainer.student.parameters()} == in_optimizer
    losses = _step(trainer)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses


def test_folded_teacher_gives_what_it_gave(tmp_path, teacher_file):
    """DISTILL.TEACHER.FOLD_NORMS (the default): the teacher's BatchNorms are folded into its
    convolutions (traced by torch.fx) and its logits and tapped maps stay what they were, with
    norm statistics far from the identity so a wrong fold would show."""
    state = torch.load(teacher_file)
    generator = torch.Generator().manual_seed(0)
    for key, value in state.items():
        norm = key.endswith(("running_mean", "running_var")) or ".bn" in key
        if norm and value.is_floating_point():
            low, high = (0.25, 4) if key.endswith("running_var") else (-1, 1)
            state[key] = torch.empty_like(value).uniform_(low, high, generator=generator)
    torch.save(state, tmp_path / "teacher.pth")
    cfg = _cfg(tmp_path, str(tmp_path / "teacher.pth"))
    cfg.DISTILL.TEACHER.FOLD_NORMS = False
    plain = _trainer(cfg).teacher
    cfg.DISTILL.TEACHER.FOLD_NORMS = True
    folded = _trainer(cfg).teacher

    def norms(teacher):
        return sum(isinstance(m, nn.BatchNorm2d) for m in teacher.modules())

    assert norms(plain) == 6 and norms(folded) == 0
    images = torch.randn(4, 3, 32, 32)
    (logits_a, maps_a), (logits_b, maps_b) = plain(images), folded(images)
    torch.testing.assert_close(logits_a, logits_b, rtol=1e-4, atol=1e-5 * logits_a.abs().max())
    assert maps_a.keys() == maps_b.keys()
    for name in maps_a:
        torch.testing.assert_close(maps_a[name], maps_b[name], rtol=1e-4,
                                   atol=1e-5 * maps_a[name].abs().max())


def test_default_amp_on_a_cpu_without_bf16_says_to_turn_amp_off(tmp_path, teacher_file,
                                                                 monkeypatch):
    """SOLVER.AMP with SOLVER.AMP_PRECISION "" means bfloat16 on the CPU: where the CPU has none,
    the error names both keys and the way out, never a silent float32 run."""
    monkeypatch.setattr(nst_det.engine.precision, "bf16_support", lambda device: "")
    monkeypatch.setattr(cls_trainer, "build_cls_dataset", _no_data)
    with pytest.raises(ValueError, match=r"SOLVER.AMP is on and SOLVER.AMP_PRECISION is '' "
                                         r"\(bfloat16 on the CPU\), but the device 'cpu' has no "
                                         r"bfloat16 arithmetic .*: set SOLVER.AMP False"):
        ClsTrainer(_cfg(tmp_path, teacher_file, amp=True))
    with pytest.raises(ValueError, match=r"SOLVER.AMP_PRECISION is 'bf16' but the device 'cpu' "
                                         r"has no bfloat16 arithmetic"):
        ClsTrainer(_cfg(tmp_path, teacher_file, amp=True, amp_precision="bf16"))
    with pytest.raises(ValueError, match=r"DISTILL.TEACHER.PRECISION is 'bf16' but the device "
                                         r"'cpu' has no bfloat16 arithmetic"):
        ClsTrainer(_cfg(tmp_path, teacher_file, "bf16"))
