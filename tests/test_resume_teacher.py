"""--resume knows its teacher: each checkpoint records the SHA-256 of DISTILL.TEACHER.WEIGHTS;
resuming with another teacher file is an error naming both hashes and the key (a warning with
DISTILL.TEACHER.ALLOW_OTHER_ON_RESUME), and a checkpoint written before the record existed resumes
with a warning. Detection through tools/train_net.py (subprocesses from a folder outside the
repository); classification through its trainer in process (tiny models, seconds)."""
import logging
import os
import re
import subprocess
import sys

import pytest
import torch

from cls_testing import PatternDataset, save_teacher, tiny_cfg
from distill_testing import save_random_teacher
from nst_det.engine.checkpointer import weights_checksum
from nst_det.engine.train_loop import OtherTeacherError
from nst_det.research.demo_data import generate_demo_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
STUDENT_NST = os.path.join(REPO, "configs", "demo", "det_student_nst.yaml")
TEACHER = os.path.join(REPO, "configs", "demo", "det_teacher.yaml")
TINY = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "80", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "80", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.DEVICE", "cpu", "DATASETS.TEST", "()", "OUTPUT_DIR", "out"]


def _train_net(cwd, env, *opts, flags=()):
    proc = subprocess.run([sys.executable, TRAIN_NET, "--config-file", STUDENT_NST, *flags, *TINY,
                           *opts],
                          cwd=str(cwd), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    return proc.returncode, proc.stdout


def test_detection_resume_with_another_teacher_is_refused_naming_both_hashes(tmp_path):
    """before: --resume took whatever teacher file the config named, silently."""
    generate_demo_data(str(tmp_path / "data" / "demo_det"), num_train=2, num_val=0, num_test=1,
                       height=64, width=80)
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "data"))
    first = save_random_teacher(TEACHER, str(tmp_path / "teacher_a.pth"), seed=1)
    other = save_random_teacher(TEACHER, str(tmp_path / "teacher_b.pth"), seed=2)
    rc, out = _train_net(tmp_path, env, "SOLVER.MAX_ITER", "1", "DISTILL.TEACHER.WEIGHTS",
                         "teacher_a.pth")
    assert rc == 0, out[-3000:]
    saved = torch.load(tmp_path / "out" / "model_final.pth", weights_only=False)["trainer"]
    assert saved["teacher"]["sha256"] == weights_checksum(first)
    rc, out = _train_net(tmp_path, env, "SOLVER.MAX_ITER", "2", "DISTILL.TEACHER.WEIGHTS",
                         "teacher_b.pth", flags=["--resume"])
    assert rc != 0
    assert (f"OtherTeacherError: --resume with another teacher: the checkpoint was trained with "
            f"teacher weights sha256 {weights_checksum(first)} ('{first}'), but "
            f"DISTILL.TEACHER.WEIGHTS '{other}' has sha256 {weights_checksum(other)}. Give the "
            f"checkpoint's teacher file, or set DISTILL.TEACHER.ALLOW_OTHER_ON_RESUME True to go "
            f"on with this one") in out, out[-3000:]


def _cls_trainer(cfg):
    from nst_det.classification.trainer import ClsTrainer

    return ClsTrainer(cfg, PatternDataset(16), PatternDataset(8, seed=1))


def test_classification_resume_checks_the_teacher(tmp_path, caplog):
    first = save_teacher(tmp_path, seed=1)
    cfg = tiny_cfg(tmp_path, teacher_weights=first, nst_weight=1.0)
    cfg.SOLVER.EPOCHS = 1
    _cls_trainer(cfg).train()
    os.rename(first, str(tmp_path / "teacher_a.pth"))
    first = str(tmp_path / "teacher_a.pth")
    other = save_teacher(tmp_path, seed=2)
    resumed = cfg.clone()
    resumed.SOLVER.EPOCHS = 2
    resumed.DISTILL.TEACHER.WEIGHTS = other
    with pytest.raises(OtherTeacherError, match=re.escape(
            f"but DISTILL.TEACHER.WEIGHTS '{other}' has sha256 {weights_checksum(other)}")):
        _cls_trainer(resumed).resume_or_load(resume=True)
    resumed.DISTILL.TEACHER.ALLOW_OTHER_ON_RESUME = True
    with caplog.at_level(logging.WARNING):
        trainer = _cls_trainer(resumed)
        trainer.resume_or_load(resume=True)
    assert trainer.start_iter > 0
    assert ("going on with it (DISTILL.TEACHER.ALLOW_OTHER_ON_RESUME)") in caplog.text
    # a checkpoint of an earlier nst_det, without the record: a warning, and it resumes
    path = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    checkpoint = torch.load(path, weights_only=False)
    del checkpoint["trainer"]["teacher"]
    torch.save(checkpoint, path)
    caplog.clear()
    resumed.DISTILL.TEACHER.ALLOW_OTHER_ON_RESUME = False
    with caplog.at_level(logging.WARNING):
        trainer = _cls_trainer(resumed)
        trainer.resume_or_load(resume=True)
    assert trainer.start_iter > 0
    assert (f"the checkpoint has no record of its teacher's weights (written before nst_det kept "
            f"one): cannot check that DISTILL.TEACHER.WEIGHTS '{other}' (sha256 "
            f"{weights_checksum(other)}) is the teacher it was trained with") in caplog.text
