"""End-to-end tests of tools/train_net.py (in-process): train a tiny teacher, distil a student
with NST, evaluate the student alone (--eval-only) and the teacher alone (--eval-teacher), and
resume an interrupted run (--resume) with the learning rate of the uninterrupted one."""
import importlib.util
import json
import os

import pytest
import torch

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.engine import HookBase
from nst_det.detection.data import register_demo_datasets
from nst_det.research.demo_data import generate_demo_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "80", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "80", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "30",
        "DATASETS.TRAIN", "('nst_demo_voc_train',)"]
# (no test-time model keys: --eval-teacher builds the teacher from its own file, without them)


def _load_train_net():
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "tools", "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_net = _load_train_net()


def run(config, *opts, flags=()):
    """tools/train_net.py --config-file configs/demo/<config> [flags] TINY + opts (in-process)."""
    argv = ["--config-file", os.path.join(REPO, "configs", "demo", config), *flags, *TINY,
            *[str(o) for o in opts]]
    return train_net.main(train_net.argument_parser().parse_args(argv))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny teacher (3 iterations) and an NST-distilled student (4 iterations, checkpoints)."""
    root = tmp_path_factory.mktemp("train_net")
    generate_demo_data(str(root / "datasets" / "demo_det"), num_train=4, num_val=0, num_test=2,
                       seed=2, height=64, width=80)
    register_demo_datasets(str(root / "datasets"))
    try:
        teacher_dir, student_dir = str(root / "teacher"), str(root / "student")
        teacher_results = run("det_teacher.yaml", "SOLVER.MAX_ITER", 3, "OUTPUT_DIR", teacher_dir)
        teacher_weights = os.path.join(teacher_dir, "model_final.pth")
        run("det_student_nst.yaml", "SOLVER.MAX_ITER", 4, "SOLVER.CHECKPOINT_PERIOD", 2,
            "DISTILL.TEACHER.WEIGHTS", teacher_weights, "OUTPUT_DIR", student_dir)
        yield dict(root=root, teacher_dir=teacher_dir, student_dir=student_dir,
                   teacher_weights=teacher_weights, teacher_results=teacher_results)
    finally:
        register_demo_datasets()


def test_training_writes_student_checkpoints_without_teacher_keys(runs):
    names = sorted(os.listdir(runs["student_dir"]))
    assert {"model_0000001.pth", "model_0000003.pth", "model_final.pth", "last_checkpoint",
            "metrics.json"} <= set(names)
    student = torch.load(os.path.join(runs["student_dir"], "model_final.pth"), weights_only=False)
    teacher = torch.load(runs["teacher_weights"], weights_only=False)
    assert student["iteration"] == 3
    assert not any("teacher" in k for k in student["model"])
    # the teacher is wider: had its weights leaked in, some student key would carry its shape
    assert all(student["model"][k].shape != teacher["model"][k].shape
               for k in student["model"] if k.endswith("res2.0.conv1.weight"))
    metrics = open(os.path.join(runs["student_dir"], "metrics.json")).read()
    assert '"loss_nst"' in metrics and '"nst/p2"' in metrics


def test_final_evaluation_reports_voc_and_coco_metrics(runs):
    results = runs["teacher_results"]
    assert set(results) == {"nst_demo_voc_test", "nst_demo_coco_test"}
    assert {"AP50", "AP50_11point", "AP50_area", "AP50-circle"} <= set(results["nst_demo_voc_test"]["bbox"])
    assert {"AP", "AR100", "APs"} <= set(results["nst_demo_coco_test"]["bbox"])


def test_eval_only_loads_the_student_alone(runs):
    results = run("det_student_nst.yaml", "MODEL.WEIGHTS",
                  os.path.join(runs["student_dir"], "model_final.pth"),
                  "DISTILL.TEACHER.WEIGHTS", str(runs["root"] / "no_such_teacher.pth"),
                  "OUTPUT_DIR", str(runs["root"] / "eval_student"), flags=["--eval-only"])
    assert "AP50" in results["nst_demo_voc_test"]["bbox"]


def test_eval_teacher_evaluates_the_teacher_alone(runs):
    as_teacher_dir, as_model_dir = runs["root"] / "eval_teacher", runs["root"] / "eval_teacher_plain"
    as_teacher = run("det_student_nst.yaml", "DISTILL.TEACHER.WEIGHTS", runs["teacher_weights"],
                     "OUTPUT_DIR", str(as_teacher_dir), flags=["--eval-only", "--eval-teacher"])
    as_model = run("det_teacher.yaml", "MODEL.WEIGHTS", runs["teacher_weights"],
                   "OUTPUT_DIR", str(as_model_dir), flags=["--eval-only"])
    for name in ("nst_demo_voc_test", "nst_demo_coco_test"):
        for key, value in as_model[name]["bbox"].items():
            assert as_teacher[name]["bbox"][key] == pytest.approx(value, nan_ok=True), (name, key)
    # the same detections, box for box: the teacher's weights and its own config were used
    # (the teacher's inference files have a folder of their own, apart from the student's)
    detections = [json.loads((d / sub / "nst_demo_coco_test" / "coco_instances_results.json")
                             .read_text()) for d, sub in ((as_teacher_dir, "inference_teacher"),
                                                          (as_model_dir, "inference"))]
    assert detections[0] and detections[0] == detections[1]
    assert not (as_teacher_dir / "inference").exists()


WATCHED = "roi_heads.box_predictor.cls_score.weight"


class _RecordLR(HookBase):
    """Records (iteration, lr) before each step; raises at ``stop_at`` to interrupt the run."""

    def __init__(self, record, stop_at=None):
        self.record, self.stop_at = record, stop_at

    def before_train(self):
        momentum = self.trainer.optimizer.state_dict()["state"]
        self.record.append((self.trainer.model.state_dict()[WATCHED].clone(), momentum))

    def before_step(self):
        if self.trainer.iter == self.stop_at:
            raise _Interrupted(f"interrupted at iteration {self.stop_at}")
        self.record.append((self.trainer.iter, self.trainer.optimizer.param_groups[0]["lr"]))


class _Interrupted(RuntimeError):
    """Stands for a run killed between two checkpoints."""


_BUILD_HOOKS = train_net.DistillTrainer.build_hooks


def _train_recording(monkeypatch, out, record, stop_at=None, resume=False):
    original = _BUILD_HOOKS
    monkeypatch.setattr(train_net.DistillTrainer, "build_hooks",
                        lambda self: original(self) + [_RecordLR(record, stop_at)])
    opts = ["SOLVER.MAX_ITER", 6, "SOLVER.STEPS", "(3, 5)", "SOLVER.CHECKPOINT_PERIOD", 2,
            "OUTPUT_DIR", out, "DATASETS.TEST", "()"]
    run("det_student.yaml", *opts, flags=["--resume"] if resume else [])


def test_resume_continues_from_the_last_checkpoint_with_the_same_lr(runs, monkeypatch):
    uninterrupted, interrupted = [], []
    _train_recording(monkeypatch, str(runs["root"] / "full"), uninterrupted)
    out = str(runs["root"] / "interrupted")
    with pytest.raises(_Interrupted):
        _train_recording(monkeypatch, out, interrupted, stop_at=5)
    assert open(os.path.join(out, "last_checkpoint")).read().strip() == "model_0000003.pth"
    checkpoint = torch.load(os.path.join(out, "model_0000003.pth"), weights_only=False)
    resumed = []
    _train_recording(monkeypatch, out, resumed, resume=True)
    (start_weights, momentum), steps = resumed[0], dict(resumed[1:])
    assert torch.equal(start_weights, checkpoint["model"][WATCHED])  # the checkpoint's weights
    assert momentum  # the optimizer's momentum buffers came back too (a fresh SGD has none)
    assert list(steps) == [4, 5]  # from the iteration after the checkpoint to the end
    full = dict(uninterrupted[1:])
    assert steps == pytest.approx({i: full[i] for i in (4, 5)})
    assert full[4] != full[2]  # the lr did step at 3: a real check
    assert torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["iteration"] == 5
