"""Two-process DDP (gloo, CPU) of the classification trainer equals one process on the same
batches; the frozen teacher is not wrapped by DDP; only rank 0 writes files."""
import json
import os

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cls_testing import PatternDataset, tiny_cfg

from nst_det.engine.atomic import load_checkpoint
from nst_det.classification.distill import DistillationStudent, FrozenTeacher
from nst_det.classification.trainer import ClsTrainer
from nst_det.engine.launch import launch
from nst_det.classification.taps import FeatureTaps


class PlainNet(nn.Module):
    """conv-ReLU-conv-ReLU, pool, fc without BatchNorm, so the loss of a batch does not depend on
    how the batch is split over processes: [N, 3, H, W] -> [N, 4]; ``body`` is [N, width, H, W]."""

    def __init__(self, width):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.body = nn.Conv2d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.body(self.stem(x))).mean(dim=(2, 3)))


class PlainNetTrainer(ClsTrainer):
    @classmethod
    def build_model(cls, cfg, input_shape, with_teacher=True):
        torch.manual_seed(7)  # the same initial weights in every process and every run
        student_net, teacher_net = PlainNet(6), PlainNet(12)
        student = DistillationStudent(student_net, FeatureTaps(student_net, ["body"]), ["body"],
                                      ["body"], cfg, nn.ModuleDict())
        return student, FrozenTeacher(FeatureTaps(teacher_net, ["body"]), ["body"])


def _run(cfg):
    trainer = PlainNetTrainer(cfg, PatternDataset(16), PatternDataset(6, seed=1))
    if trainer.world_size > 1:
        if not isinstance(trainer._trainer.model.student, DistributedDataParallel):
            raise AssertionError("the student is not wrapped by DDP")
        if isinstance(trainer.teacher, DistributedDataParallel) or any(
                p is q for p in trainer._trainer.model.student.parameters() for q in trainer.teacher.parameters()):
            raise AssertionError("the teacher is inside DDP")
    trainer.train()


def _losses(out):
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line) for line in f]
    return {r["iteration"]: r for r in rows if "total_loss" in r}, rows


def test_two_process_ddp_equals_one_process(tmp_path):
    cfgs = {}
    for name in ("one", "two"):
        cfg = tiny_cfg(tmp_path / name, "", nst_weight=50.0, kd_weight=1.0)
        cfg.SOLVER.EPOCHS = 2
        cfgs[name] = cfg
    _run(cfgs["one"])
    launch(_run, 2, dist_url="auto", args=(cfgs["two"],))

    one, two = (str(tmp_path / n / "out") for n in ("one", "two"))
    losses_one, rows_one = _losses(one)
    losses_two, rows_two = _losses(two)
    assert sorted(losses_one) == sorted(losses_two) == [0, 1, 2, 3]  # 16 images, batch 8, 2 epochs
    for it in losses_one:
        for term in ("loss_cls", "loss_nst", "loss_kd", "total_loss"):
            # float32 sums in another order: equal within a relative 1e-5
            assert abs(losses_one[it][term] - losses_two[it][term]) <= 1e-5 * abs(
                losses_one[it][term]) + 1e-7, (it, term)
    assert len(rows_one) == len(rows_two)  # no second writer appended lines
    final_one = load_checkpoint(os.path.join(one, "model_final.pth"))
    final_two = load_checkpoint(os.path.join(two, "model_final.pth"))
    # the random state of each process, for an exact --resume on two processes
    assert len(final_two["trainer"]["hooks"]["RNGCheckpointHook"]["per_rank"]) == 2
    for k, v in final_one["model"].items():
        assert torch.allclose(v, final_two["model"][k], atol=1e-5), k
    # Only rank 0 wrote: the same files as the one-process run, no per-rank file.
    def files(out):  # TensorBoard event files carry a host name and a time stamp
        return sorted("events" if f.startswith("events.") else f for f in os.listdir(out))

    assert files(two) == files(one) == ["events", "last_checkpoint", "metrics.json",
                                        "model_0000001.pth", "model_0000003.pth",
                                        "model_final.pth"]
