"""Every command of README.md, docs/*.md and datasets/README.md, run as a user runs it: the tool as
a subprocess, the shipped config, data in the official layouts under ``$DETECTRON2_DATASETS`` /
``$NST_DATASETS`` (tests/conftest.py), from a working directory outside the repository.

Each documented command is taken from the docs word for word (:func:`documented`) and only the
overrides a CPU user needs are appended (``MODEL.DEVICE cpu``, small images, a few iterations,
``MODEL.WEIGHTS ""`` where no ImageNet weights exist, BatchNorm that learns its statistics in place
of a random FrozenBN, ``--num-gpus 2`` for ``--num-gpus 8``). ``test_every_documented_command_is_run``
checks that the commands run here are exactly the documented ones, so no doc names a command that
no test runs. The stages follow the docs' order: the VOC teacher, the NST student from it (on two
CPU processes), its evaluation alone and the teacher's, resume; the same for COCO; the ImageNet
stage with a torchvision ResNet-101 teacher, its conversion to a Detectron2 backbone and the VOC
detector initialised from it; predictions evaluated and drawn; the benchmarks and the demos.
"""
import glob
import json
import math
import os
import pickle
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(REPO, "README.md"), os.path.join(REPO, "datasets", "README.md")] + sorted(
    glob.glob(os.path.join(REPO, "docs", "*.md")))
VENV_BIN = os.path.dirname(sys.executable)
_PROGRAMS = ("python", "python3", "bash", "torchrun", ".venv/bin/python", ".venv/bin/pip")

# Documented commands a test cannot run here, each with the reason. The set-up commands are run by
# CI itself (tools/run_tests.sh is the command CI runs; tools/setup_env.sh is called by it).
NOT_RUN = {
    "bash tools/run_tests.sh": "the command that runs this test suite (CI runs it)",
    "bash tools/setup_env.sh": "run by tools/run_tests.sh before every test run",
    "python3 -m venv .venv": "installation step; tools/setup_env.sh does it in CI",
    ".venv/bin/pip install torch==2.14.1 torchvision==0.29.1":
        "installation step; tools/setup_env.sh does it in CI",
    ".venv/bin/pip install --no-build-isolation git+https://github.com/facebookresearch/detectron2.git":
        "installs the official Detectron2 from GitHub, which this machine cannot reach",
    # docs/DETECTION.md, "Your own data set, no Python": run word for word, with the documented
    # yaml, by tests/test_custom_datasets.py
    "python tools/train_net.py --config-file my_data.yaml": "run by tests/test_custom_datasets.py",
    "python tools/eval_predictions.py output/my_data/inference/my_coco_val/coco_instances_results.json "
    "--dataset my_coco_val --config-file my_data.yaml": "run by tests/test_custom_datasets.py",
    "python tools/visualize_predictions.py output/my_data/inference/my_coco_val/coco_instances_results.json "
    "--dataset my_coco_val --config-file my_data.yaml --output output/my_data/pictures":
        "run by tests/test_custom_datasets.py",
    # docs/DETECTION.md, "Deploying the distilled student": run word for word on a student that
    # tools/train_net.py distils, by tests/test_export_student.py
    "python tools/export_student.py --config-file configs/demo/det_student_nst.yaml "
    "MODEL.WEIGHTS output/demo_det/student_nst/model_final.pth --output output/demo_det/student_nst/export":
        "run by tests/test_export_student.py",
}

# What a CPU user adds to a detection command on tiny images.
D2_CPU = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
          "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "SOLVER.IMS_PER_BATCH", "2",
          "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0",
          "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
          "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
          # no ImageNet weights: BatchNorm learns its statistics (a random FrozenBN net diverges)
          "MODEL.RESNETS.NORM", "BN", "MODEL.INCEPTION_BN.NORM", "BN"]
NO_WEIGHTS = ["MODEL.WEIGHTS", ""]
# What a CPU user adds to a classification command on 64 x 64 images.
CLS_CPU = ["MODEL.DEVICE", "cpu", "SOLVER.BATCH_SIZE", "4", "SOLVER.EPOCHS", "1",
           "SOLVER.STEPS", "()", "SOLVER.AMP", "False", "DATA.NUM_WORKERS", "0",
           "DATA.RESIZE_SIZE", "40", "DATA.CROP_SIZE", "32", "LOG_PERIOD", "1"]


# ------------------------------------------------------------------------------------------------
# the documented commands
# ------------------------------------------------------------------------------------------------
def _command_lines(markdown: str):
    """Lines of the fenced blocks (bash or untagged) of ``markdown``, continuation lines joined."""
    lines, fenced, block, pending = [], False, False, ""
    for line in markdown.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            block = fenced and line.strip() in ("```", "```bash", "```sh", "```shell")
            pending = ""
            continue
        if not block:
            continue
        text = pending + line.strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        if text:
            lines.append(text)
    return lines


def extract_documented_commands():
    """{normalised command: [doc files]} of every documented command line."""
    found = {}
    for path in DOCS:
        with open(path, encoding="utf-8") as f:
            for line in _command_lines(f.read()):
                if line.split()[0] not in _PROGRAMS:  # output, tables, ... in untagged blocks
                    continue
                tokens = shlex.split(line, comments=True)
                if tokens:
                    found.setdefault(" ".join(tokens), []).append(os.path.relpath(path, REPO))
    return found


DOCUMENTED = extract_documented_commands()
RAN = set()


def documented(command: str):
    """The tokens of ``command``, which must be documented word for word; marked as run."""
    key = " ".join(shlex.split(command))
    assert key in DOCUMENTED, f"not a documented command: {command}"
    RAN.add(key)
    return shlex.split(command)


def localise(tokens, datasets_root: str, placeholders=None, num_gpus: str = "2"):
    """The documented tokens as run from outside the repository: the venv's programs, the repo's
    tools and configs by absolute path, ``datasets/...`` data under ``datasets_root``,
    ``placeholders`` (``/path/to/resnet101.pth``, ``tcp://HOST:PORT``, ...) replaced, and
    ``--num-gpus 8`` -> ``--num-gpus num_gpus``."""
    placeholders = placeholders or {}
    out = []
    for i, token in enumerate(tokens):
        if i == 0 and token in ("python", "python3", ".venv/bin/python"):
            token = sys.executable
        elif i == 0 and token == "torchrun":
            token = os.path.join(VENV_BIN, "torchrun")
        elif token in placeholders:
            token = placeholders[token]
        elif re.match(r"(tools|configs)/", token) or os.path.isfile(os.path.join(REPO, token)):
            token = os.path.join(REPO, token)
        elif token.startswith("datasets/"):
            token = os.path.join(datasets_root, token[len("datasets/"):])
        elif i > 0 and tokens[i - 1] in ("--num-gpus", "--nproc_per_node") and token == "8":
            token = num_gpus
        out.append(token)
    return out


def run(workspace, env, tokens, *extra, expect_ok=True, timeout=600):
    """Run ``tokens + extra`` in ``workspace``; the completed process (stdout and stderr merged)."""
    proc = subprocess.run([str(t) for t in list(tokens) + list(extra)], cwd=str(workspace),
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    if expect_ok and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, tokens))} exited {proc.returncode}:\n{proc.stdout[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The user's working directory, outside the repository; shared by the stages below."""
    return tmp_path_factory.mktemp("user")


@pytest.fixture(scope="module")
def env(official_env):
    return dict(official_env, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def resnet101_teacher(workspace, official_datasets):
    """A torchvision ResNet-101 state dict (random: what matters is the file format)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    path = workspace / "resnet101.pth"
    classes = len(official_datasets.imagenet_classes)
    torch.save(torchvision.models.resnet101(num_classes=classes).state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def cmd(official_datasets, resnet101_teacher):
    """``cmd(documented command, num_gpus="2")``: its tokens, ready to run."""
    placeholders = {"/path/to/resnet101.pth": resnet101_teacher,
                    "/path/to/imagenet": official_datasets.imagenet}

    def make(command, num_gpus="2", **more):
        return localise(documented(command), official_datasets.root, dict(placeholders, **more),
                        num_gpus=num_gpus)
    return make


def _copypaste(output: str):
    """The numbers of the last evaluation table (Detectron2's 'copypaste' lines of the log)."""
    match = re.findall(r"copypaste: AP,AP50,AP75.*\n.*copypaste: ([\d.na,]+)", output)
    assert match, output[-3000:]
    return [float(v) for v in match[-1].split(",")]


# ------------------------------------------------------------------------------------------------
# detection on VOC: teacher -> NST student (2 processes) -> eval-only, eval-teacher, resume
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def voc(workspace, env, cmd):
    teacher = run(workspace, env, cmd(
        "python tools/train_net.py --config-file configs/voc_frcnn_R101_teacher.yaml --num-gpus 8",
        num_gpus="1"), *D2_CPU, *NO_WEIGHTS)
    student = run(workspace, env, cmd(
        "python tools/train_net.py --config-file configs/voc_frcnn_nst.yaml --num-gpus 8"),
        *D2_CPU, *NO_WEIGHTS)
    return {"teacher": teacher.stdout, "student": student.stdout}


def test_voc_teacher_then_nst_student_on_two_processes(voc, workspace):
    teacher_out = workspace / "output" / "voc_frcnn_R101_teacher"
    student_out = workspace / "output" / "voc_frcnn_nst"
    assert (teacher_out / "model_final.pth").is_file() and (student_out / "model_final.pth").is_file()
    assert "voc_2007_trainval" in voc["teacher"] and "voc_2012_trainval" in voc["teacher"]
    # the class histogram of Detectron2's data loading is printed (numpy aliases fixed)
    assert "Distribution of instances among all 20 categories" in voc["teacher"]
    assert "World size: 2" in voc["student"]
    metrics = [json.loads(line) for line in (student_out / "metrics.json").read_text().splitlines()]
    assert [m["iteration"] for m in metrics if "loss_nst" in m] == [1]
    assert all(math.isfinite(m["loss_nst"]) and "nst/p2" in m for m in metrics if "loss_nst" in m)
    # ends with the VOC table: AP, AP50, AP75, AP50_11point, AP50_area
    assert len(_copypaste(voc["student"])) == 5


def test_voc_eval_only_and_eval_teacher(voc, workspace, env, cmd):
    student = run(workspace, env, cmd(
        "python tools/train_net.py --config-file configs/voc_frcnn_nst.yaml --eval-only "
        "MODEL.WEIGHTS output/voc_frcnn_nst/model_final.pth"), *D2_CPU)
    teacher = run(workspace, env, cmd(
        "python tools/train_net.py --config-file configs/voc_frcnn_nst.yaml --eval-only "
        "--eval-teacher"), *D2_CPU)
    assert _copypaste(student.stdout) and _copypaste(teacher.stdout)
    assert "Evaluating the teacher alone" in teacher.stdout
    assert "Evaluating the teacher alone" not in student.stdout


def test_voc_resume_continues_the_run(voc, workspace, env, cmd):
    proc = run(workspace, env, cmd(
        "python tools/train_net.py --config-file configs/voc_frcnn_nst.yaml --resume"),
        *D2_CPU, *NO_WEIGHTS, "SOLVER.MAX_ITER", "3")
    assert re.search(r"Loading from .*model_final\.pth", proc.stdout), proc.stdout[-3000:]
    metrics = [json.loads(line) for line in
               (workspace / "output" / "voc_frcnn_nst" / "metrics.json").read_text().splitlines()]
    # the first run logged iteration 1 (its last); the resumed one trains iteration 2 only
    assert [m["iteration"] for m in metrics if "loss_nst" in m] == [1, 2]


def test_voc_single_process_commands(voc, workspace, env, cmd):
    for config in ("voc_frcnn_R101_teacher", "voc_frcnn_InceptionBN_baseline", "voc_frcnn_nst"):
        proc = run(workspace, env, cmd(f"python tools/train_net.py --config-file configs/{config}.yaml"),
                   *D2_CPU, *NO_WEIGHTS, "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", f"output/single/{config}")
        assert _copypaste(proc.stdout), config


# ------------------------------------------------------------------------------------------------
# LazyConfig students (tools/lazyconfig_train_net.py): VOC from the yaml teacher trained above,
# COCO LSJ from the model zoo's LSJ R-101 (random weights in the model zoo's .pkl format)
# ------------------------------------------------------------------------------------------------
# What a CPU user adds to a LazyConfig command (key=value): tiny images, a few iterations, no
# ImageNet weights (so BatchNorm that learns its statistics), a small learning rate.
LAZY_CPU = [
    "train.device=cpu", "train.init_checkpoint=", "train.max_iter=2", "train.log_period=1",
    "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0", "optimizer.lr=0.001",
    "model.proposal_generator.post_nms_topk=[64,64]", "model.roi_heads.batch_size_per_image=32",
    "model.backbone.bottom_up.stem.norm=BN", "model.backbone.bottom_up.stages.norm=BN",
    "dataloader.test.mapper.augmentations=[{_target_: detectron2.data.transforms."
    "ResizeShortestEdge, short_edge_length: 64, max_size: 96}]",
]
LAZY_VOC_TRAIN = ("dataloader.train.mapper.augmentations=[{_target_: detectron2.data.transforms."
                  "ResizeShortestEdge, short_edge_length: [64], sample_style: choice, "
                  "max_size: 96}]")
# LSJ's scale jitter at 64 pixels (its FixedSizeCrop of polygons needs shapely, not installed here)
LAZY_COCO_TRAIN = ("dataloader.train.mapper.augmentations=[{_target_: detectron2.data.transforms."
                   "ResizeScale, min_scale: 0.5, max_scale: 1.0, target_height: 64, "
                   "target_width: 64}]")
LAZY_VOC = "python tools/lazyconfig_train_net.py --config-file configs/lazy/voc_frcnn_R50_nst.py"


def test_voc_lazyconfig_student_from_the_yaml_teacher(voc, workspace, env, cmd):
    out = workspace / "output" / "lazy" / "voc_frcnn_R50_nst"
    train = run(workspace, env, cmd(LAZY_VOC + " --num-gpus 8", num_gpus="1"), *LAZY_CPU,
                LAZY_VOC_TRAIN)
    assert "Teacher: GeneralizedRCNN" in train.stdout and len(_copypaste(train.stdout)) == 5
    resumed = run(workspace, env, cmd(LAZY_VOC + " --num-gpus 8 --resume", num_gpus="1"),
                  *LAZY_CPU, LAZY_VOC_TRAIN, "train.max_iter=3")
    assert "Starting training from iteration 2" in resumed.stdout
    evaluated = run(workspace, env, cmd(
        LAZY_VOC + " --eval-only train.init_checkpoint=output/lazy/voc_frcnn_R50_nst/model_final.pth"),
        *LAZY_CPU[:1], *LAZY_CPU[2:], LAZY_VOC_TRAIN)
    assert len(_copypaste(evaluated.stdout)) == 5 and "Teacher:" not in evaluated.stdout
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert [m["iteration"] for m in metrics if "loss_nst" in m] == [0, 1, 2]


def test_coco_lazyconfig_lsj_student(workspace, env, cmd):
    import torch

    from distill_testing import save_model_zoo_pkl
    from nst_det.detection.teacher import build_teacher_model

    torch.manual_seed(0)
    (workspace / "pretrained").mkdir(exist_ok=True)
    save_model_zoo_pkl(build_teacher_model("zoo://new_baselines/mask_rcnn_R_101_FPN_100ep_LSJ.py"),
                       str(workspace / "pretrained" / "mask_rcnn_R_101_FPN_100ep_LSJ.pkl"))
    proc = run(workspace, env, cmd(
        "python tools/lazyconfig_train_net.py --config-file configs/lazy/coco_mask_rcnn_R50_LSJ_nst.py "
        "--num-gpus 8 model.teacher.weights=pretrained/mask_rcnn_R_101_FPN_100ep_LSJ.pkl "
        "distill.NST.WEIGHT=8", num_gpus="1"), *LAZY_CPU, LAZY_COCO_TRAIN)
    assert "turned into FrozenBatchNorm2d" in proc.stdout and len(_copypaste(proc.stdout)) == 6
    assert (workspace / "output" / "lazy" / "coco_mask_rcnn_R50_LSJ_nst" / "model_final.pth").is_file()


# ------------------------------------------------------------------------------------------------
# detection on COCO, then the predictions file evaluated and drawn
# ------------------------------------------------------------------------------------------------
COCO_RESULTS = "output/coco_frcnn_nst/inference/coco_2017_val/coco_instances_results.json"


@pytest.fixture(scope="module")
def coco(workspace, env, cmd):
    outputs = {}
    for config in ("coco_frcnn_R101_teacher", "coco_frcnn_nst"):
        for command in (f"python tools/train_net.py --config-file configs/{config}.yaml",
                        f"python tools/train_net.py --config-file configs/{config}.yaml --num-gpus 8"):
            documented(command)  # the docs name both; the two-process road is run on VOC above
        outputs[config] = run(workspace, env, cmd(command, num_gpus="1"), *D2_CPU,
                              *NO_WEIGHTS).stdout
    return outputs


def test_coco_teacher_then_nst_student(coco, workspace):
    for config, out in coco.items():
        assert len(_copypaste(out)) == 12, config  # the COCO table
        assert "coco_2017_train" in out
    assert json.loads((workspace / COCO_RESULTS).read_text())


def test_predictions_are_evaluated_and_drawn(coco, workspace, env, cmd):
    for command in (f"python tools/eval_predictions.py {COCO_RESULTS} --dataset coco_2017_val",
                    f"python tools/eval_predictions.py {COCO_RESULTS} --gt "
                    "datasets/coco/annotations/instances_val2017.json"):
        proc = run(workspace, env, cmd(command))
        assert "AP50" in proc.stdout, command
    for command in (f"python tools/visualize_predictions.py {COCO_RESULTS} --dataset coco_2017_val "
                    "--output pictures/",
                    f"python tools/visualize_predictions.py {COCO_RESULTS} --dataset coco_2017_val "
                    "--output output/pictures --max-images 50"):
        run(workspace, env, cmd(command), "--score-threshold", "0")
    assert glob.glob(str(workspace / "pictures" / "*.png"))
    assert glob.glob(str(workspace / "output" / "pictures" / "*.png"))


# ------------------------------------------------------------------------------------------------
# classification (ImageNet layout) -> Detectron2 backbone -> VOC detector
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def imagenet(workspace, env, cmd, official_datasets):
    classes = str(len(official_datasets.imagenet_classes))
    proc = run(workspace, env, cmd(
        "python tools/train_cls.py --config-file configs/imagenet/nst_poly_kd.yaml --num-gpus 8 "
        "DISTILL.TEACHER.WEIGHTS /path/to/resnet101.pth"), *CLS_CPU, "MODEL.NUM_CLASSES", classes)
    return {"train": proc.stdout, "classes": ["MODEL.NUM_CLASSES", classes]}


def test_imagenet_stage_trains_resumes_and_evaluates(imagenet, workspace, env, cmd):
    assert (workspace / "output" / "imagenet" / "nst_poly_kd" / "model_final.pth").is_file()
    assert "top-1" in imagenet["train"]
    resumed = run(workspace, env, cmd(
        "python tools/train_cls.py --config-file configs/imagenet/nst_poly_kd.yaml --num-gpus 8 "
        "--resume DISTILL.TEACHER.WEIGHTS /path/to/resnet101.pth"),
        *CLS_CPU, *imagenet["classes"], "SOLVER.EPOCHS", "2")
    assert "top-1" in resumed.stdout
    student = run(workspace, env, cmd(
        "python tools/train_cls.py --config-file configs/imagenet/nst_poly_kd.yaml --eval-only "
        "MODEL.STUDENT.WEIGHTS output/imagenet/nst_poly_kd/model_final.pth"),
        *CLS_CPU, *imagenet["classes"])
    assert re.search(r"student on imagenet val: top-1 [\d.]+%", student.stdout)
    teacher = run(workspace, env, cmd(
        "python tools/train_cls.py --config-file configs/imagenet/nst_poly_kd.yaml --eval-only "
        "--eval-teacher DISTILL.TEACHER.WEIGHTS /path/to/resnet101.pth"), *CLS_CPU, *imagenet["classes"])
    assert re.search(r"teacher on imagenet val: top-1 [\d.]+%", teacher.stdout)
    run(workspace, env, cmd(
        "python tools/train_cls.py --config-file configs/imagenet/nst_poly_kd.yaml --num-gpus 8 "
        "DISTILL.TEACHER.WEIGHTS /path/to/resnet101.pth DATA.ROOT /path/to/imagenet", num_gpus="1"),
        *CLS_CPU, *imagenet["classes"], "OUTPUT_DIR", "output/imagenet_root")
    assert (workspace / "output" / "imagenet_root" / "model_final.pth").is_file()


def test_imagenet_stage_under_torchrun_and_on_two_machines(imagenet, workspace, env, cmd):
    run(workspace, env, cmd(
        "torchrun --nproc_per_node 8 tools/train_cls.py --config-file configs/imagenet/nst_poly_kd.yaml "
        "DISTILL.TEACHER.WEIGHTS /path/to/resnet101.pth"),
        *CLS_CPU, *imagenet["classes"], "OUTPUT_DIR", "output/torchrun")
    assert (workspace / "output" / "torchrun" / "model_final.pth").is_file()
    # two "machines" on this one: machine ranks 0 and 1, one process each
    from nst_det.engine.launch import free_port

    url = f"tcp://127.0.0.1:{free_port()}"
    procs = []
    for rank in ("0", "1"):
        tokens = cmd("python tools/train_cls.py --config-file configs/imagenet/nst_poly_kd.yaml "
                     "--num-gpus 8 --num-machines 2 --machine-rank 0 --dist-url tcp://HOST:PORT "
                     "DISTILL.TEACHER.WEIGHTS /path/to/resnet101.pth",
                     num_gpus="1", **{"tcp://HOST:PORT": url})
        tokens[tokens.index("--machine-rank") + 1] = rank
        procs.append(subprocess.Popen(
            tokens + CLS_CPU + imagenet["classes"] + ["OUTPUT_DIR", "output/two_machines"],
            cwd=str(workspace), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert (workspace / "output" / "two_machines" / "model_final.pth").is_file()


def test_converted_student_initialises_the_voc_detector(imagenet, voc, workspace, env, cmd):
    converted = run(workspace, env, cmd(
        "python tools/convert_cls_to_d2.py output/imagenet/nst_poly_kd/model_final.pth "
        "inception_bn_nst.pkl --fpn"))
    assert "MODEL.BACKBONE.NAME build_inception_bn_fpn_backbone" in converted.stdout
    with open(workspace / "inception_bn_nst.pkl", "rb") as f:
        weights = pickle.load(f)["model"]
    cpu = [v for i, v in enumerate(D2_CPU) if D2_CPU[i - (i % 2)] != "MODEL.INCEPTION_BN.NORM"]
    detector = run(workspace, env, cmd(
        "python tools/train_net.py --config-file configs/voc_frcnn_nst_pretrained.yaml "
        "MODEL.WEIGHTS inception_bn_nst.pkl"), *cpu, "SOLVER.MAX_ITER", "1")
    assert _copypaste(detector.stdout)
    import torch

    final = torch.load(workspace / "output" / "voc_frcnn_nst_pretrained" / "model_final.pth",
                       weights_only=False)["model"]
    # the stem is frozen (MODEL.INCEPTION_BN.FREEZE_AT 1): after training it still holds exactly
    # the converted weights, so they were loaded
    stem = [k for k in weights if k.startswith("backbone.bottom_up.stem.")]
    assert stem
    for key in stem:
        assert torch.equal(final[key].cpu(), torch.as_tensor(weights[key])), key


# ------------------------------------------------------------------------------------------------
# benchmarks, demos, data generation
# ------------------------------------------------------------------------------------------------
def test_benchmark_commands(voc, workspace, env, cmd):
    for command in (
            "python tools/benchmark_distill.py --config-file configs/voc_frcnn_nst.yaml --iters 10 "
            "--threads 2 MODEL.DEVICE cpu",
            "python tools/benchmark_distill.py --config-file configs/voc_frcnn_nst.yaml --iters 10 "
            "--threads 2 --default-malloc MODEL.DEVICE cpu",
            "python tools/benchmark_distill.py --config-file configs/voc_frcnn_nst.yaml --size 320 "
            "--iters 5 --threads 1 MODEL.DEVICE cpu",
            "python tools/benchmark_distill.py --config-file configs/demo/det_student_nst.yaml "
            "--iters 10 --threads 1",
            "python tools/benchmark_distill.py --config-file configs/voc_frcnn_nst.yaml --iters 5 "
            "--threads 2 MODEL.DEVICE cpu DISTILL.TEACHER.PRECISION bf16 "
            "DISTILL.TEACHER.CHANNELS_LAST True",
            "python tools/benchmark_distill.py --config-file configs/voc_frcnn_nst.yaml --iters 5 "
            "--threads 2 --config-only MODEL.DEVICE cpu DISTILL.TEACHER.CHANNELS_LAST False "
            "DISTILL.TEACHER.FOLD_NORMS False"):
        tokens = cmd(command)
        for option in ("--iters", "--size"):  # the documented values give way to tiny ones
            while option in tokens:
                at = tokens.index(option)
                del tokens[at:at + 2]
        # tiny, and only the config's settings (the other precisions and layouts: measured by
        # tests/test_research_benchmark_distill.py)
        if "--config-only" not in tokens:
            tokens.insert(4, "--config-only")
        proc = run(workspace, env, tokens[:4] + ["--iters", "1", "--size", "64"] + tokens[4:])
        assert re.search(r"parts ratio: \d+\.\d\d .*\noverhead: \d+\.\d\d", proc.stdout), command
        kept = "--default-malloc" not in command
        assert ("freed memory kept for reuse" in proc.stdout) == kept, command
    proc = run(workspace, env, cmd("python tools/benchmark_losses.py"),
               "--scales", "cifar", "--repeats", "1", "--max-gb", "0.5")
    assert "cifar" in proc.stdout and "load average (1 min)" in proc.stdout


def test_demo_commands(workspace, env, cmd):
    run(workspace, env, cmd("python datasets/generate_demo_data.py"))
    both = run(workspace, env, cmd("bash tools/run_demo.sh"), "--cls-seeds", "1",
               "--cls-epochs", "1", "--det-iters", "1", "--output-dir", "output/demo_cmd")
    assert "demo finished" in both.stdout
    # tools/run_demo.sh runs the two documented demo tools themselves, with the flags above
    for command, stage in (("python tools/demo_cls.py", "cls"), ("python tools/demo_det.py", "det")):
        documented(command)
        assert f"=== {stage}: {os.path.join(REPO, command.split()[1])}" in both.stdout, stage
    assert "VOC AP50" in both.stdout and "NST" in both.stdout


def _shortened(tokens, *extra):
    """``tokens`` with ``extra`` flags put before the config overrides (before a ``--``, which
    starts them), so that a later flag shortens the documented run."""
    at = tokens.index("--") if "--" in tokens else len(tokens)
    return tokens[:at] + list(extra) + tokens[at:]


# The documented demo runs of docs/RESULTS.md, shortened: one seed, one epoch or iteration.
CLS_DEMO_RUNS = [
    "python tools/demo_cls.py --seeds 5 --nst-weights 2 5 10 --output-dir output/demo_cls_weights",
    'python tools/demo_cls.py --seeds 5 --methods "student alone" "NST (poly)" "NST (gaussian)" '
    '"NST (linear)" AT --output-dir output/demo_cls_kernels',
    "python tools/demo_cls.py --seeds 5 --output-dir output/demo_cls_block3 -- "
    "DISTILL.STUDENT_FEATURES \"['block3.bn1']\" DISTILL.TEACHER_FEATURES \"['block3.bn2']\"",
    'python tools/demo_cls.py --methods "NST (poly)" "NST (poly) + KD" --output-dir '
    'output/demo_cls_bf16_teacher -- DISTILL.TEACHER.PRECISION bf16',
    'python tools/demo_cls.py --methods "NST (poly)" "NST (poly) + KD" --output-dir '
    'output/demo_cls_fp32_teacher -- DISTILL.TEACHER.PRECISION fp32',
    "python tools/demo_cls.py --seeds 5 --teacher-epochs 8 --nst-weights 50 --output-dir "
    "output/demo_cls_narrow -- MODEL.STUDENT.NAME demo_student DISTILL.STUDENT_FEATURES "
    "\"['block3']\" DISTILL.TEACHER_FEATURES \"['block3']\"",
]
DET_DEMO_RUNS = [
    "python tools/demo_det.py --seeds 3",
    "python tools/demo_det.py --seeds 3 --nst-weights 2 4 8 16 --output-dir output/demo_det_weights",
    "python tools/demo_det.py --seeds 3 --teacher-precisions fp32 bf16 --output-dir "
    "output/demo_det_precision",
]


def test_documented_demo_runs(workspace, env, cmd, tmp_path):
    for command in CLS_DEMO_RUNS:
        proc = run(workspace, env, _shortened(cmd(command), "--seeds", "1", "--epochs", "1",
                                              "--teacher-epochs", "1"))
        out = workspace / command.split("--output-dir ")[1].split()[0]
        assert (out / "results.md").read_text() in proc.stdout, command
    narrow = json.loads((workspace / "output" / "demo_cls_narrow" / "demo_results.json").read_text())
    assert list(narrow["runs"]) == ["student alone", "NST (poly), weight 50", "KD",
                                    "NST (poly) + KD, weight 50"]
    # the detection runs on a tiny generated set, one seed, one student iteration
    from nst_det.research.demo_data import generate_demo_data

    tiny = tmp_path / "datasets"
    generate_demo_data(str(tiny / "demo_det"), num_train=4, num_val=0, num_test=2, seed=4,
                       height=64, width=80)
    for command in DET_DEMO_RUNS:
        proc = run(workspace, env, _shortened(cmd(command), "--seeds", "1", "--iters", "1",
                                              "--datasets-root", str(tiny)))
        assert "| student + NST" in proc.stdout and "wall time: " in proc.stdout, command
        if "--teacher-precisions" in command:
            assert "| student + NST, bf16 teacher |" in proc.stdout, command
    # the selectivity of the detection demo's students, drawn from the runs above
    proc = run(workspace, dict(env, DETECTRON2_DATASETS=str(tiny)), cmd(
        "python tools/visualize_selectivity.py --config-file configs/demo/det_student_nst.yaml "
        "--before output/demo_det/student/seed0/model_final.pth "
        "--after output/demo_det/student_nst/seed0/model_final.pth "
        "--output output/demo_det/selectivity.png "
        "DISTILL.TEACHER.WEIGHTS output/demo_det/teacher/model_final.pth"))
    assert "level p2 (teacher p2): MMD² to the teacher" in proc.stdout
    assert (workspace / "output" / "demo_det" / "selectivity.png").is_file()


def test_every_documented_command_is_run():
    """Runs last (file order): every documented command was run above or is listed in NOT_RUN."""
    missing = set(DOCUMENTED) - RAN - set(NOT_RUN)
    assert not missing, f"documented but run by no test: {sorted(missing)}"
    assert set(NOT_RUN) <= set(DOCUMENTED), f"NOT_RUN lists undocumented: {set(NOT_RUN) - set(DOCUMENTED)}"
