"""Tests of the classification trainer (nst_det/classification/trainer.py, distill.py, the shared
engine in nst_det/engine and tools/train_cls.py): every method learns, the teacher stays frozen and out of
checkpoints, resume is exact, bad input and NaN give clear errors, checkpoints are atomic."""
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.utils.events import EventStorage

from cls_testing import PatternDataset, save_teacher, tiny_cfg

import nst_det.losses
from nst_det.classification.config import load_cls_config
from nst_det.classification.distill import FrozenTeacher, build_distillation
from nst_det.classification.trainer import ClsTrainer, accuracy_counts
from nst_det.engine.atomic import UnreadableCheckpointError, load_checkpoint
from nst_det.engine.checkpointer import WeightsMismatchError
from nst_det.engine.train_loop import NonFiniteLossError
from nst_det.engine.warmup import warmup_factor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METHODS = {
    "ce": {},
    "kd": dict(kd_weight=10.0),  # large enough to dominate the random teacher vs the labels
    "fitnet": dict(fitnet_weight=1.0),
    "at": dict(at_weight=1000.0),
    "nst_linear": dict(nst_weight=50.0, nst_kernel="linear"),
    "nst_poly": dict(nst_weight=50.0, nst_kernel="poly"),
    "nst_gaussian": dict(nst_weight=50.0, nst_kernel="gaussian"),
    "nst_poly_kd": dict(nst_weight=50.0, kd_weight=1.0),
}


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher"))


def _trainer(cfg, n=8, augment=False):
    return ClsTrainer(cfg, PatternDataset(n, augment=augment), PatternDataset(8, seed=1))


def _first_batch(trainer):
    return next(iter(trainer._trainer.data_loader))


def _steps_on(trainer, batch, n, start=0):
    """The loss terms (as the loop writes them) of ``n`` training steps on the same ``batch``."""
    loop = trainer._trainer
    loop.data_stream = itertools.repeat(batch)
    steps = []
    with EventStorage(start) as storage:
        for i in range(start, start + n):
            storage.iter = loop.iter = i
            loop.run_step()
            steps.append({k: h.latest() for k, h in storage.histories().items()
                          if k.startswith(("loss_", "total_loss"))})
    return steps


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_lowers_its_loss_on_a_fixed_batch(tmp_path, teacher_file, method):
    trainer = _trainer(tiny_cfg(tmp_path, teacher_file, **METHODS[method]))
    steps = _steps_on(trainer, _first_batch(trainer), 12)
    expected = {"loss_cls", "total_loss"} | {f"loss_{m.split('_')[0]}" for m in METHODS[method]}
    assert set(steps[0]) == expected
    assert steps[-1]["total_loss"] < 0.7 * steps[0]["total_loss"]
    if len(expected) == 3:  # one distillation term: that term itself falls too
        term = (expected - {"loss_cls", "total_loss"}).pop()
        assert steps[-1][term] < steps[0][term]


def test_teacher_is_frozen_and_never_in_the_checkpoint(tmp_path, teacher_file):
    cfg = tiny_cfg(tmp_path, teacher_file, nst_weight=50.0, fitnet_weight=1.0)
    cfg.SOLVER.EPOCHS = 1
    trainer = _trainer(cfg)
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    trainer.train()
    teacher = trainer.teacher
    assert isinstance(teacher, FrozenTeacher) and not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():  # weights AND BatchNorm statistics unchanged
        assert torch.equal(v, teacher_before[k]), k
    ckpt = load_checkpoint(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    assert set(ckpt["model"]) == set(trainer.student.classifier.state_dict())
    teacher_tensors = [v for v in teacher.state_dict().values() if v.numel() > 1]
    saved = list(ckpt["model"].values()) + list(ckpt["heads"].values())
    assert not any(t.shape == s.shape and torch.equal(t, s) for t in teacher_tensors for s in saved)
    # FitNet's regressor is trained with the student: in the optimizer and in the checkpoint.
    head_params = {id(p) for p in trainer.student.heads.parameters()}
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert head_params and head_params <= in_optimizer
    assert any(k.startswith("fitnet.0.regressor") for k in ckpt["heads"])
    assert not (head_params & {id(p) for p in teacher.parameters()})


def _lrs_and_weights(cfg):
    lrs = {}
    with open(os.path.join(cfg.OUTPUT_DIR, "metrics.json")) as f:
        for line in f:
            row = json.loads(line)
            if "lr" in row:
                lrs[row["iteration"]] = row["lr"]  # a resumed run's later line wins
    ckpt = load_checkpoint(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    return lrs, ckpt


def _assert_same_run(a, b):
    (lrs_a, ckpt_a), (lrs_b, ckpt_b) = a, b
    # A run killed right after a checkpoint may lose that iteration's metrics row (Detectron2's
    # writer hook runs after the checkpointer's): every other iteration has its row, same lr.
    missing = set(lrs_a) - set(lrs_b)
    assert len(missing) <= 1 and not set(lrs_b) - set(lrs_a), (missing, sorted(lrs_b))
    assert {i: lrs_a[i] for i in lrs_b} == lrs_b
    assert ckpt_a["iteration"] == ckpt_b["iteration"]
    for k, v in ckpt_a["model"].items():
        assert torch.equal(v, ckpt_b["model"][k]), k
    assert ckpt_a["trainer"]["hooks"]["LRScheduler"] == ckpt_b["trainer"]["hooks"]["LRScheduler"]


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, teacher_file):
    def cfg_for(name):
        cfg = tiny_cfg(tmp_path / name, teacher_file, nst_weight=50.0, warmup_iters=5)
        cfg.SOLVER.EPOCHS, cfg.SOLVER.STEPS = 3, (1, 2)
        return cfg

    full = cfg_for("full")
    _trainer(full, n=16, augment=True).train()

    cut = cfg_for("cut")
    trainer = _trainer(cut, n=16, augment=True)
    calls = []
    original = trainer._trainer.run_step

    def interrupted_step():
        calls.append(1)
        if len(calls) == 5:  # inside epoch 3, after the checkpoint of epoch 2
            raise KeyboardInterrupt
        return original()

    trainer._trainer.run_step = interrupted_step
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    resumed = _trainer(cut, n=16, augment=True)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.01)
    resumed.train()
    _assert_same_run(_lrs_and_weights(full), _lrs_and_weights(cut))
    lrs = _lrs_and_weights(full)[0]
    assert [lrs[i] for i in (0, 2, 4)] == pytest.approx([0.05, 0.005, 0.0005])


def test_truncated_checkpoint_is_named_and_resume_falls_back(tmp_path, teacher_file, caplog):
    cfg = tiny_cfg(tmp_path, teacher_file)
    _trainer(cfg).train()
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    with open(final, "r+b") as f:
        f.truncate(os.path.getsize(final) // 2)
    with pytest.raises(UnreadableCheckpointError, match="model_final.pth' is truncated"):
        load_checkpoint(final)
    resumed = _trainer(cfg)
    resumed.resume_or_load(resume=True)
    # the checkpoint of the last iteration that Detectron2's PeriodicCheckpointer writes beside
    # model_final.pth: the run is over
    assert resumed.start_iter == resumed.max_iter == 2
    assert "falling back to the newest complete checkpoint" in caplog.text
    assert "model_0000001.pth (skipped unreadable" in caplog.text
    assert "model_final.pth" in caplog.text
    # The same truncated file as a weights file is an error naming the file and the key.
    cfg.MODEL.STUDENT.WEIGHTS = final
    with pytest.raises(WeightsMismatchError, match="MODEL.STUDENT.WEIGHTS.*model_final.pth"):
        _trainer(cfg)


def test_checkpoint_writes_leave_no_temporary_file(tmp_path, teacher_file):
    cfg = tiny_cfg(tmp_path, teacher_file)
    _trainer(cfg).train()
    assert sorted(f for f in os.listdir(cfg.OUTPUT_DIR) if not f.startswith("events")) == [
        "last_checkpoint", "metrics.json", "model_0000000.pth", "model_0000001.pth",
        "model_final.pth"]
    assert open(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")).read() == "model_final.pth"


def test_nan_loss_stops_naming_the_term_and_keeps_the_checkpoint(tmp_path, teacher_file,
                                                                  monkeypatch):
    cfg = tiny_cfg(tmp_path, teacher_file, nst_weight=50.0)
    trainer = _trainer(cfg)
    trainer.train()  # 2 epochs, 1 iteration each
    good = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    before = open(good, "rb").read()
    cfg.SOLVER.EPOCHS = 3
    trainer = _trainer(cfg)
    trainer.resume_or_load(resume=True)
    monkeypatch.setattr(nst_det.losses, "nst_loss", lambda s, t, **kw: s.sum() * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at iteration 2: loss_nst = nan "
                                                 r"\(rank 0\)\. Training stopped before the "
                                                 r"optimizer step"):
        trainer.train()
    assert open(good, "rb").read() == before
    assert not os.path.exists(os.path.join(cfg.OUTPUT_DIR, "model_0000002.pth"))


def test_nan_features_are_reported_by_the_term_they_break(tmp_path, teacher_file, caplog):
    trainer = _trainer(tiny_cfg(tmp_path, teacher_file, nst_weight=50.0))
    with torch.no_grad():
        trainer.student.classifier.block3.conv1.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at iteration 0: "
                                                 r"loss_cls = nan, loss_nst = nan \(rank 0\)"):
        _steps_on(trainer, _first_batch(trainer), 1)
    # the log names the tensor that holds the NaN, and the term it broke
    assert re.search(r"student .* contains NaN or inf \(loss_nst\)", caplog.text)


def test_wrong_layer_name_is_named(tmp_path, teacher_file):
    cfg = tiny_cfg(tmp_path, teacher_file, nst_weight=50.0)
    cfg.DISTILL.STUDENT_FEATURES = ["block9"]
    with pytest.raises(ValueError, match=r"DISTILL.STUDENT_FEATURES \['block9'\].*no layer 'block9'"):
        _trainer(cfg)


def test_spatial_mismatch_names_both_layers(tmp_path, teacher_file):
    cfg = tiny_cfg(tmp_path, teacher_file, at_weight=1.0)
    cfg.DISTILL.STUDENT_FEATURES = ["block2"]
    with pytest.raises(ValueError, match=r"student layer 'block2' gives \(1, 32, 8, 8\) but teacher "
                                         r"layer 'block3' gives \(1, 128, 4, 4\)"):
        _trainer(cfg)


def test_missing_weights_file_is_named(tmp_path, teacher_file):
    cfg = tiny_cfg(tmp_path, str(tmp_path / "no_teacher.pth"), kd_weight=1.0)
    with pytest.raises(FileNotFoundError, match=r"teacher weights file '.*no_teacher.pth' "
                                                r"\(DISTILL.TEACHER.WEIGHTS\) does not exist"):
        _trainer(cfg)
    with pytest.raises(ValueError, match="DISTILL.TEACHER.WEIGHTS is empty"):
        _trainer(tiny_cfg(tmp_path, "", kd_weight=1.0))


def test_missing_relative_weights_file_lists_where_it_was_looked_for(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    config = runs / "run.yaml"
    config.write_text(f'_BASE_: "{os.path.join(ROOT, "configs/demo/cls_student_kd.yaml")}"\n'
                      'DISTILL:\n  TEACHER:\n    WEIGHTS: "teacher.pth"\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_cls_config(str(config))
    tried = [runs / "teacher.pth", tmp_path / "teacher.pth", os.path.join(ROOT, "teacher.pth")]
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"teacher weights file 'teacher.pth' (DISTILL.TEACHER.WEIGHTS) does not exist; tried: "
            f"{', '.join(str(p) for p in tried)}")):
        build_distillation(cfg, (3, 24, 24))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_a_gpu_is_an_error_before_any_data(tmp_path):
    cfg = tiny_cfg(tmp_path)
    cfg.MODEL.DEVICE = "cuda"
    cfg.DATA.NAME, cfg.DATA.ROOT = "imagenet", str(tmp_path / "no_imagenet")
    with pytest.raises(ValueError, match=r"MODEL.DEVICE is 'cuda' but this machine has no usable "
                                         r"CUDA device: pass MODEL.DEVICE cpu"):
        ClsTrainer(cfg)


def test_zero_weight_needs_no_teacher_file(tmp_path):
    cfg = tiny_cfg(tmp_path, str(tmp_path / "no_teacher.pth"), nst_weight=0.0, kd_weight=0.0)
    trainer = _trainer(cfg)
    assert trainer.teacher is None and trainer.student.terms == []


@pytest.mark.parametrize("value", [-1.0, float("inf"), float("nan")])
def test_negative_or_non_finite_weight_is_refused_not_turned_off(tmp_path, teacher_file, value):
    with pytest.raises(ValueError, match=f"DISTILL.AT.WEIGHT is {value}: a distillation weight "
                                         f"must be a finite number >= 0"):
        _trainer(tiny_cfg(tmp_path, teacher_file, at_weight=value))


def test_eval_only_builds_the_student_alone(tmp_path, teacher_file):
    """A distilled student is evaluated without its teacher file; its checkpoint (with FitNet
    regressors and optimizer state) loads into the eval-only trainer."""
    cfg = tiny_cfg(tmp_path, teacher_file, fitnet_weight=1.0, kd_weight=1.0)
    cfg.SOLVER.EPOCHS = 1
    trained = _trainer(cfg)
    metrics = trained.train()
    cfg.DISTILL.TEACHER.WEIGHTS = str(tmp_path / "gone.pth")
    trainer = ClsTrainer(cfg, val_set=PatternDataset(8, seed=1), eval_only=True)
    assert trainer.teacher is None and not hasattr(trainer, "_trainer")
    trainer.resume_or_load(resume=True)
    assert trainer.evaluate() == pytest.approx(metrics)
    with pytest.raises(ValueError, match="eval_teacher=True"):
        trainer.evaluate(teacher=True)
    with pytest.raises(FileNotFoundError, match="gone.pth"):  # the teacher is built for it
        ClsTrainer(cfg, val_set=PatternDataset(8, seed=1), eval_only=True, eval_teacher=True)


def test_teacher_weights_of_another_architecture_are_refused(tmp_path):
    wrong = save_teacher(tmp_path, name="demo_student")
    with pytest.raises(WeightsMismatchError, match=r"teacher weights file '.*demo_student\.pth' "
                                                   r"\(DISTILL.TEACHER.WEIGHTS\) does not match the "
                                                   r"teacher demo_teacher: .*wrongly shaped keys"):
        _trainer(tiny_cfg(tmp_path, wrong, kd_weight=1.0))


def test_distillation_warm_up_is_linear(tmp_path, teacher_file):
    cfg = tiny_cfg(tmp_path, teacher_file, kd_weight=1.0, warmup_iters=4)
    trainer = _trainer(cfg)
    assert [warmup_factor(i, 4) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    step = trainer._trainer.model  # the loop's module: reads the iteration from the trainer
    batch = _first_batch(trainer)
    with torch.no_grad(), EventStorage(0) as storage:
        quarter = step(batch)["loss_kd"]
        storage.iter = 3
        full = step(batch)["loss_kd"]
    assert quarter.item() == pytest.approx(0.25 * full.item(), rel=1e-5)


def test_accuracy_counts_match_a_naive_count():
    torch.manual_seed(0)
    logits, targets = torch.randn(50, 10), torch.randint(0, 10, (50,))
    ranks = (logits > logits.gather(1, targets[:, None])).sum(dim=1)  # classes scored higher
    assert accuracy_counts(logits, targets) == [int((ranks < 1).sum()), int((ranks < 5).sum())]


def test_eval_reports_top1_top5_for_student_and_teacher(tmp_path, teacher_file):
    trainer = _trainer(tiny_cfg(tmp_path, teacher_file, kd_weight=1.0))
    student, teacher = trainer.evaluate(), trainer.evaluate(teacher=True)
    for metrics in (student, teacher):
        assert 0 <= metrics["top1"] <= metrics["top5"] <= 100
    logits = trainer.teacher(torch.stack([trainer.val_set[i][0] for i in range(8)]))[0]
    labels = torch.tensor([trainer.val_set[i][1] for i in range(8)])
    assert teacher["top1"] == pytest.approx(100 * (logits.argmax(1) == labels).float().mean())


def _train_cls(out, *extra, wait=True):
    cmd = [sys.executable, os.path.join(ROOT, "tools/train_cls.py"), "--config-file",
           os.path.join(ROOT, "configs/demo/cls_student.yaml"), *extra, "OUTPUT_DIR", str(out),
           "SOLVER.EPOCHS", "2", "SOLVER.STEPS", "(1,)", "SOLVER.BATCH_SIZE", "256",
           "DATA.IMAGE_SIZE", "16", "LOG_PERIOD", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # tiny nets; two runs share the cores
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env)
    if wait:
        out_text = proc.communicate(timeout=300)[0].decode()
        assert proc.returncode == 0, out_text
    return proc


def test_sigkill_after_a_checkpoint_then_resume_equals_uninterrupted(tmp_path):
    """tools/train_cls.py on the digits demo config, killed with SIGKILL right after its first
    checkpoint, resumed with --resume: same lr at every iteration, same final weights."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    uninterrupted = _train_cls(full, wait=False)  # runs beside the run that gets killed
    proc = _train_cls(cut, wait=False)
    deadline = time.time() + 300
    while not (cut / "last_checkpoint").exists():
        assert proc.poll() is None and time.time() < deadline, "no checkpoint written"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "model_final.pth").exists()
    _train_cls(cut, "--resume")
    out_text = uninterrupted.communicate(timeout=300)[0].decode()
    assert uninterrupted.returncode == 0, out_text

    class Cfg:
        OUTPUT_DIR = str(full)

    class CfgCut:
        OUTPUT_DIR = str(cut)

    _assert_same_run(_lrs_and_weights(Cfg), _lrs_and_weights(CfgCut))
