"""tools/lazyconfig_train_net.py as a subprocess, from a working directory outside the repository,
on data in the official layouts (conftest's VOC2007/VOC2012 and COCO 2017), with the shipped
LazyConfig files (configs/lazy/) made tiny by ``key=value`` overrides only; the teachers are the
configs' own, with random weights written first.

- the VOC student (Faster R-CNN R-50 FPN, NST from the yaml R-101 teacher) trains, writes
  checkpoints without a teacher tensor and logs loss_nst per level;
- ``--resume`` after an interruption (the run's files after its checkpoint at iteration 3)
  ends with the same weights as the uninterrupted run, tensor for tensor; the same resume
  with a data stream that starts afresh (the broken variant) does not, so the comparison bites;
- ``--eval-only`` evaluates the student alone (no teacher file needed) with the config's VOC
  evaluator;
- a bad distillation setting is refused, naming its key, before anything is built;
- the COCO student (LSJ Mask R-CNN R-50, NST from the LSJ R-101 LazyConfig teacher) trains;
- ``--num-gpus 2`` runs two gloo processes on the CPU.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "lazyconfig_train_net.py")
VOC = os.path.join(ROOT, "configs", "lazy", "voc_frcnn_R50_nst.py")
COCO = os.path.join(ROOT, "configs", "lazy", "coco_mask_rcnn_R50_LSJ_nst.py")

# Tiny and deterministic: CPU, 2 images a batch, 64-pixel images, data loading in the main
# process, a fixed seed, few proposals; BatchNorm in the R-50 trunk (random FrozenBN weights
# overflow at the first step: there is no ImageNet initialisation here).
TINY = [
    "train.device=cpu", "train.init_checkpoint=", "+train.seed=0", "train.log_period=1",
    "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0", "optimizer.lr=0.001",
    "model.proposal_generator.post_nms_topk=[30,10]", "model.roi_heads.batch_size_per_image=32",
    "model.backbone.bottom_up.stem.norm=BN", "model.backbone.bottom_up.stages.norm=BN",
    "dataloader.test.mapper.augmentations=[{_target_: detectron2.data.transforms."
    "ResizeShortestEdge, short_edge_length: 64, max_size: 80}]",
]
VOC_TINY = TINY + [
    "dataloader.train.mapper.augmentations=[{_target_: detectron2.data.transforms."
    "ResizeShortestEdge, short_edge_length: [64], sample_style: choice, max_size: 80}]",
]
# LSJ's scale jitter, at 64 pixels (its FixedSizeCrop of polygons needs shapely; not here)
COCO_TINY = TINY + [
    "dataloader.train.mapper.augmentations=[{_target_: detectron2.data.transforms.ResizeScale, "
    "min_scale: 0.5, max_scale: 1.0, target_height: 64, target_width: 64}]",
]
MAX_ITER, PERIOD = 6, 2

# Runs the tool as __main__; "fresh-data-stream" is the broken variant of --resume: the data
# stream starts again at its beginning instead of where the checkpoint left it.
DRIVER = """
import runpy, sys
if sys.argv[1] == "fresh-data-stream":
    from nst_det.detection.data.build import ResumableTrainLoader
    ResumableTrainLoader.start_at = lambda self, iteration: None
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def env(official_env):
    return dict(official_env, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in [official_env.get("PYTHONPATH")] if p]),
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def run_tool(cwd, env, config, *opts, flags=(), mode="normal", check=True, timeout=400):
    cmd = [sys.executable, "-c", DRIVER, mode, TOOL, "--config-file", config, *flags, *opts]
    proc = subprocess.run(cmd, cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def random_teacher(config: str, path: str) -> str:
    """The weights of the teacher of ``config`` (its model.teacher.config), randomly initialised."""
    import nst_det.detection  # noqa: F401
    from detectron2.config import LazyConfig
    from nst_det.detection.teacher import build_teacher_model
    from nst_det.engine.config_paths import local_path

    teacher_config = LazyConfig.load(config).model.teacher.config
    torch.manual_seed(0)
    teacher = build_teacher_model(local_path(teacher_config))
    torch.save({"model": teacher.state_dict()}, path)
    return path


def metrics(out):
    with open(os.path.join(str(out), "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def weights(out, name="model_final.pth"):
    return torch.load(os.path.join(str(out), name), map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def voc(tmp_path_factory, env):
    """An uninterrupted VOC run; the same run interrupted after its checkpoint at iteration 3 and
    resumed; and resumed by the broken variant."""
    work = tmp_path_factory.mktemp("lazy_voc")  # the working directory: outside the repository
    teacher = random_teacher(VOC, str(work / "voc_teacher.pth"))
    opts = VOC_TINY + [f"model.teacher.weights={teacher}", f"train.max_iter={MAX_ITER}",
                       f"train.checkpointer.period={PERIOD}"]
    full = work / "full"
    full_run = run_tool(work, env, VOC, *opts, f"train.output_dir={full}")
    # An interruption right after the checkpoint of iteration 3: what the run had written by then.
    cut, broken = work / "cut", work / "broken"
    for out in (cut, broken):
        shutil.copytree(full, out, copy_function=os.link)  # links: the resumed run renames, never rewrites
        for name in ("model_0000005.pth", "model_final.pth"):
            os.remove(out / name)
        (out / "last_checkpoint").write_text("model_0000003.pth")
    resumed = run_tool(work, env, VOC, *opts, f"train.output_dir={cut}", flags=["--resume"])
    run_tool(work, env, VOC, *opts, f"train.output_dir={broken}", flags=["--resume"],
             mode="fresh-data-stream")
    return dict(work=work, teacher=teacher, full=full, cut=cut, broken=broken,
                full_log=full_run.stdout + full_run.stderr,
                resumed_log=resumed.stdout + resumed.stderr, opts=opts)


def test_voc_student_trains_with_nst_and_saves_no_teacher(voc):
    names = set(os.listdir(voc["full"]))
    assert {"model_0000001.pth", "model_0000003.pth", "model_0000005.pth", "model_final.pth",
            "last_checkpoint", "metrics.json"} <= names
    checkpoint = weights(voc["full"])
    assert checkpoint["iteration"] == MAX_ITER - 1
    # the student's keys, exactly: those of the plain Faster R-CNN of the same config
    import nst_det.detection  # noqa: F401
    from detectron2.config import LazyConfig, instantiate
    from nst_det.detection.lazy import student_node
    cfg = LazyConfig.apply_overrides(LazyConfig.load(VOC), voc["opts"])
    student = instantiate(student_node(cfg.model))
    assert type(student).__name__ == "GeneralizedRCNN"
    assert set(checkpoint["model"]) == set(student.state_dict())
    assert not any("teacher" in k for k in checkpoint["model"])
    rows = metrics(voc["full"])
    assert any("loss_nst" in r and "nst/p2" in r and "nst/p6" in r for r in rows)
    assert "Teacher: GeneralizedRCNN" in voc["full_log"]


def test_resume_after_an_interruption_ends_with_the_same_weights(voc):
    assert "Starting training from iteration 4" in voc["resumed_log"]
    full, resumed = weights(voc["full"]), weights(voc["cut"])
    assert resumed["iteration"] == full["iteration"] == MAX_ITER - 1
    assert set(resumed["model"]) == set(full["model"])
    different = [k for k in full["model"] if not torch.equal(full["model"][k], resumed["model"][k])]
    assert not different, different[:5]
    # the learning rate of every resumed iteration is the uninterrupted run's
    lr = {r["iteration"]: r["lr"] for r in metrics(voc["full"]) if "lr" in r}
    assert len(set(lr.values())) > 1
    assert open(voc["cut"] / "last_checkpoint").read() == "model_final.pth"


def test_a_resume_that_restarts_the_data_stream_is_caught(voc):
    full, broken = weights(voc["full"]), weights(voc["broken"])
    assert any(not torch.equal(full["model"][k], broken["model"][k]) for k in full["model"])


def test_eval_only_evaluates_the_student_alone(voc, env):
    proc = run_tool(voc["work"], env, VOC, *voc["opts"],
                    f"train.init_checkpoint={voc['full'] / 'model_final.pth'}",
                    f"model.teacher.weights={voc['work'] / 'no_such_teacher.pth'}",
                    f"train.output_dir={voc['work'] / 'eval'}", flags=["--eval-only"])
    log = proc.stdout + proc.stderr
    assert "copypaste: AP,AP50,AP75,AP50_11point,AP50_area" in log
    assert "AP50-car" in log  # the VOC evaluator's per-class AP
    assert "Teacher:" not in log


def test_eval_only_refuses_an_empty_init_checkpoint(voc, env):
    proc = run_tool(voc["work"], env, VOC, *voc["opts"], f"train.output_dir={voc['work'] / 'e2'}",
                    flags=["--eval-only"], check=False)
    assert proc.returncode != 0
    assert "train.init_checkpoint is empty" in proc.stderr


def test_a_bad_distillation_setting_is_refused_naming_its_key(tmp_path, env):
    # (every other bad setting: tests/test_detection_lazy.py, in-process)
    proc = run_tool(tmp_path, env, VOC, *VOC_TINY, "model.teacher.weights=/no/such/file.pth",
                    f"train.output_dir={tmp_path / 'out'}", "distill.NST.WEIGHT=-1", check=False,
                    timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "distill.NST.WEIGHT is -1" in last, proc.stderr[-2000:]
    assert "Teacher:" not in proc.stdout + proc.stderr  # refused before anything was built
    assert not (tmp_path / "out").exists()


def test_coco_lsj_student_distils_from_the_lsj_r101_lazy_teacher(tmp_path, env):
    teacher = random_teacher(COCO, str(tmp_path / "coco_teacher.pth"))
    out = tmp_path / "out"
    proc = run_tool(tmp_path, env, COCO, *COCO_TINY, f"model.teacher.weights={teacher}",
                    "train.max_iter=3", "train.checkpointer.period=2", f"train.output_dir={out}")
    log = proc.stdout + proc.stderr
    assert "turned into FrozenBatchNorm2d" in log  # the LSJ teacher's SyncBN, frozen
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log  # the COCO evaluator of the config
    # the LSJ configs' train.amp.enabled: bfloat16 on the CPU
    assert "runs under torch.autocast on cpu in torch.bfloat16, no grad scaler" in log
    checkpoint = weights(out)
    assert checkpoint["iteration"] == 2
    assert any(k.startswith("roi_heads.mask_head.") for k in checkpoint["model"])
    assert not any("teacher" in k for k in checkpoint["model"])
    assert any("loss_nst" in r and "loss_mask" in r for r in metrics(out))


def test_two_cpu_processes(voc, env):
    out = voc["work"] / "ddp"
    proc = run_tool(voc["work"], env, VOC, *voc["opts"], "train.max_iter=2",
                    "dataloader.train.total_batch_size=4", "train.eval_period=0",
                    f"train.output_dir={out}", flags=["--num-gpus", "2"])
    log = proc.stdout + proc.stderr
    assert "world size: 2" in log.lower() or "2 CPU processes" in log
    checkpoint = weights(out)
    assert checkpoint["iteration"] == 1
    assert not any("teacher" in k for k in checkpoint["model"])
    assert any("loss_nst" in r for r in metrics(out))
