"""Each bad input of the detection stage gets a clear error (or warning) naming the culprit, proven
through the tool a user runs (``tools/train_net.py``, ``tools/convert_cls_to_d2.py``, run as
subprocesses from a working directory outside the repository) or, for the cheaper cases, through
the library function that the tool calls.

Subprocesses: ~5-10 s each (imports); seven of them. Everything else runs in-process on tiny
models and the tiny demo set (4 training and 2 test images of 64 x 80).
"""
import errno
import importlib.util
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_backbone, build_model

from disk_full import DiskFullAfter
from distill_testing import save_random_teacher, write_teacher_config
from nst_det.engine import atomic
from nst_det.classification.models import build_classifier
from nst_det.detection.load_config import get_nst_cfg, load_nst_cfg, load_teacher_cfg
from nst_det.detection.teacher import build_teacher_model
from nst_det.engine.config_paths import REPO_ROOT
from nst_det.detection.data import register_demo_datasets
from nst_det.research.demo_data import generate_demo_data
from nst_det.detection.trainer import DistillTrainer
from nst_det.engine import checkpointer as checkpointer_module
from nst_det.engine.checkpointer import WeightsMismatchError, load_weights_strictly

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
CONVERT = os.path.join(REPO, "tools", "convert_cls_to_d2.py")
DEMO = os.path.join(REPO, "configs", "demo")
STUDENT = os.path.join(DEMO, "det_student.yaml")
STUDENT_NST = os.path.join(DEMO, "det_student_nst.yaml")
TEACHER = os.path.join(DEMO, "det_teacher.yaml")
# Tiny images and one iteration on the CPU (KEY VALUE strings, as on a command line).
TINY = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "80", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "80", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "1",
        "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu"]
WEIGHT_RULE = r"a distillation weight must be a finite number >= 0 \(0 turns the term off\)"


def _tool(script, *args, cwd, env=None, timeout=180):
    """``<venv python> script args`` in ``cwd``; (exit status, stdout + stderr)."""
    proc = subprocess.run([sys.executable, script, *[str(a) for a in args]], cwd=str(cwd),
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    """A root holding the tiny demo set (4 train, 2 test images, 3 classes) in demo_det/."""
    root = tmp_path_factory.mktemp("bad_input_datasets")
    generate_demo_data(str(root / "demo_det"), num_train=4, num_val=0, num_test=2,
                       height=64, width=80)
    return root


@pytest.fixture(scope="module")
def demo_env(datasets_root):
    """Environment for a subprocess that uses the tiny demo set."""
    return dict(os.environ, DETECTRON2_DATASETS=str(datasets_root))


@pytest.fixture
def demo_registered(datasets_root):
    """The demo set names point at the tiny set in this process (restored afterwards)."""
    register_demo_datasets(str(datasets_root))
    try:
        yield datasets_root
    finally:
        register_demo_datasets()


@pytest.fixture(scope="module")
def other_arch_weights(tmp_path_factory):
    """A randomly initialised demo TEACHER (wider R-50 FPN) saved as a checkpoint: weights of
    another architecture for the demo student."""
    folder = tmp_path_factory.mktemp("other_arch")
    torch.manual_seed(0)
    model = build_model(load_nst_cfg(TEACHER))
    os.makedirs(folder, exist_ok=True)
    DetectionCheckpointer(model, str(folder)).save("other")
    return str(folder / "other.pth")


# ------------------------------------------------------------------------------------------------
# 1. MODEL.DEVICE cuda on a machine without a GPU
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: cuda is valid")
def test_cuda_device_without_a_gpu_stops_before_anything_is_built(tmp_path):
    """before: the shipped MODEL.DEVICE cuda crashed deep inside model building (CUDA error)."""
    rc, out = _tool(TRAIN_NET, "--config-file", os.path.join(REPO, "configs", "voc_frcnn_nst.yaml"),
                    cwd=tmp_path)
    assert rc != 0, out
    assert re.search(
        r"ValueError: MODEL\.DEVICE is 'cuda' but this machine has no usable CUDA device: pass "
        r"MODEL\.DEVICE cpu on the command line \(e\.g\. `python tools/train_net\.py "
        r"--config-file \.\.\. MODEL\.DEVICE cpu`\) or run on a machine with a GPU\.", out), out
    # nothing built: no output dir (OUTPUT_DIR is relative to the cwd), no model, no log
    assert list(tmp_path.iterdir()) == []
    assert "GeneralizedRCNN(" not in out and "Full config saved" not in out


# ------------------------------------------------------------------------------------------------
# 2. Negative or non-finite distillation weights
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, value, message", [
    ("DISTILL.NST.WEIGHT", "-1.0", rf"DISTILL\.NST\.WEIGHT is -1\.0: {WEIGHT_RULE}"),
    ("DISTILL.NST.WEIGHT", "1e999", rf"DISTILL\.NST\.WEIGHT is inf: {WEIGHT_RULE}"),
    ("DISTILL.LEVEL_WEIGHTS", "[1,1,-1,1,1]",
     rf"DISTILL\.LEVEL_WEIGHTS\[2\] is -1: {WEIGHT_RULE}"),
    ("DISTILL.KD.WEIGHT", "-2.0", rf"DISTILL\.KD\.WEIGHT is -2\.0: {WEIGHT_RULE}"),
    ("DISTILL.NST.SIGMA2", "-1.0",
     r"DISTILL\.NST\.SIGMA2 is -1\.0: the Gaussian bandwidth must be a finite number > 0, or 0 "
     r"for the data-driven rule"),
])
def test_negative_or_infinite_distillation_weight_is_refused_naming_the_key(key, value, message):
    """before: a negative weight maximised the MMD (the student learnt to differ from it)."""
    with pytest.raises(ValueError, match=message):
        load_nst_cfg(STUDENT_NST, [key, value])


def test_nan_weights_in_a_yaml_are_refused_naming_the_key(tmp_path):
    """before: a NaN weight made every loss NaN from the first iteration on."""
    for body, message in [
        ("  NST:\n    WEIGHT: .nan\n", rf"DISTILL\.NST\.WEIGHT is nan: {WEIGHT_RULE}"),
        ("  LEVEL_WEIGHTS: [1.0, .nan, 1.0, 1.0, 1.0]\n",
         rf"DISTILL\.LEVEL_WEIGHTS\[1\] is nan: {WEIGHT_RULE}"),
    ]:
        child = tmp_path / "nan.yaml"
        child.write_text(f'_BASE_: "{STUDENT_NST}"\nDISTILL:\n{body}')
        with pytest.raises(ValueError, match=message):
            load_nst_cfg(str(child))


@pytest.mark.parametrize("value, shown, type_name", [
    ("nan", "nan", "str"), ("float('nan')", r"float\('nan'\)", "str"), ("-1", "-1", "int")])
def test_nan_or_integer_weight_on_the_command_line_is_refused_naming_the_key(value, shown,
                                                                             type_name):
    """before: the string 'nan' could have reached the loss; it is refused (yacs' type check)."""
    # literal_eval cannot make a float NaN: "nan" stays a string; an integer is not a float.
    with pytest.raises(ValueError, match=(
            rf"Type mismatch \(<class 'float'> vs\. <class '{type_name}'>\) with values "
            rf"\(4\.0 vs\. {shown}\) for config key: DISTILL\.NST\.WEIGHT")):
        load_nst_cfg(STUDENT_NST, ["DISTILL.NST.WEIGHT", value])


def test_negative_weight_through_train_net_exits_nonzero_naming_the_key(tmp_path):
    """before: tools/train_net.py trained with a negative NST weight and pushed the student away."""
    rc, out = _tool(TRAIN_NET, "--config-file", STUDENT_NST, "MODEL.DEVICE", "cpu",
                    "DISTILL.NST.WEIGHT", "-1.0", cwd=tmp_path)
    assert rc != 0, out
    assert re.search(rf"ValueError: DISTILL\.NST\.WEIGHT is -1\.0: {WEIGHT_RULE}", out), out
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# 3. Weight 0 needs no teacher file; weight > 0 and a missing file lists the paths tried
# ------------------------------------------------------------------------------------------------
def test_zero_weight_trains_without_the_teacher_file_and_warns(tmp_path, demo_env):
    """before: NST weight 0 still built the teacher and died on its missing weights file."""
    rc, out = _tool(TRAIN_NET, "--config-file", STUDENT_NST, *TINY, "DISTILL.NST.WEIGHT", "0.0",
                    "DISTILL.TEACHER.WEIGHTS", "no_such_teacher.pth", "OUTPUT_DIR", "out",
                    "DATASETS.TEST", "()", cwd=tmp_path, env=demo_env)
    assert rc == 0, out
    warning = (r"DISTILL\.NST\.WEIGHT and DISTILL\.KD\.WEIGHT are 0: nothing is distilled, no "
               r"teacher is built, the student trains alone\.")
    assert re.search(r"WARNING .*nst_det\.detection\.meta_arch\]: " + warning, out), out
    assert re.search(warning, (tmp_path / "out" / "log.txt").read_text())
    assert (tmp_path / "out" / "model_final.pth").is_file()


def test_missing_teacher_file_with_weight_above_zero_lists_the_paths_tried(tmp_path, monkeypatch):
    """before: a bare "No such file" for a relative path, without saying where it was looked for."""
    monkeypatch.chdir(tmp_path)
    cfg = load_nst_cfg(STUDENT_NST, ["DISTILL.TEACHER.WEIGHTS", "no_such_teacher.pth"])
    with pytest.raises(FileNotFoundError, match=re.escape(
            "teacher weights file 'no_such_teacher.pth' (DISTILL.TEACHER.WEIGHTS) does not "
            f"exist; tried: {tmp_path / 'no_such_teacher.pth'}, "
            f"{os.path.join(REPO_ROOT, 'no_such_teacher.pth')}")):
        build_model(cfg)


# ------------------------------------------------------------------------------------------------
# 4. Paths relative to the yaml that names them
# ------------------------------------------------------------------------------------------------
def _child_yaml(folder):
    folder.mkdir(parents=True, exist_ok=True)
    child = folder / "child.yaml"
    child.write_text(f'_BASE_: "{STUDENT_NST}"\nDISTILL:\n  TEACHER:\n'
                     f'    CONFIG: "teacher.yaml"\n    WEIGHTS: "teacher.pth"\n')
    return child


def test_teacher_paths_are_read_next_to_the_yaml_from_any_cwd(tmp_path, monkeypatch):
    """before: relative teacher paths were read from the cwd: a command worked from one folder."""
    child = _child_yaml(tmp_path / "yamls")
    (tmp_path / "yamls" / "teacher.yaml").write_text(f'_BASE_: "{TEACHER}"\n')
    (tmp_path / "yamls" / "teacher.pth").write_bytes(b"")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_nst_cfg(str(child))
    assert cfg.DISTILL.TEACHER.CONFIG == str(tmp_path / "yamls" / "teacher.yaml")
    assert cfg.DISTILL.TEACHER.WEIGHTS == str(tmp_path / "yamls" / "teacher.pth")


def test_missing_yaml_relative_teacher_files_list_every_candidate(tmp_path, monkeypatch):
    """before: the error named only the cwd-relative path, not where the yaml meant."""
    child = _child_yaml(tmp_path / "yamls")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_nst_cfg(str(child))
    for key, name, what, load in [
        ("DISTILL.TEACHER.CONFIG", "teacher.yaml", "teacher config file",
         lambda path: load_teacher_cfg(path)),
        ("DISTILL.TEACHER.WEIGHTS", "teacher.pth", "teacher weights file",
         lambda path: load_weights_strictly(nn.Module(), path, "DISTILL.TEACHER.WEIGHTS",
                                            what="teacher weights file")),
    ]:
        tried = [tmp_path / "yamls" / name, elsewhere / name, os.path.join(REPO_ROOT, name)]
        with pytest.raises(FileNotFoundError, match=re.escape(
                f"{what} '{name}' ({key}) does not exist; tried: "
                + ", ".join(str(p) for p in tried))):
            load(cfg.DISTILL.TEACHER.get(key.split(".")[-1]))


# ------------------------------------------------------------------------------------------------
# 5. ROI_HEADS.NUM_CLASSES that differs from the data set
# ------------------------------------------------------------------------------------------------
def test_num_classes_other_than_the_data_set_names_both_numbers(tmp_path, demo_env):
    """before: 5 classes on a 3-class set trained silently, with 2 classes that never occur."""
    rc, out = _tool(TRAIN_NET, "--config-file", STUDENT, *TINY, "MODEL.ROI_HEADS.NUM_CLASSES", "5",
                    "OUTPUT_DIR", "out", cwd=tmp_path, env=demo_env)
    assert rc != 0, out
    assert re.search(
        r"ValueError: MODEL\.ROI_HEADS\.NUM_CLASSES is 5 but data set 'nst_demo_voc_test' "
        r"\(DATASETS\.TEST\) has 3 classes \(circle, square, triangle\): set "
        r"MODEL\.ROI_HEADS\.NUM_CLASSES 3", out), out
    assert not (tmp_path / "out" / "model_final.pth").exists()


# ------------------------------------------------------------------------------------------------
# 6. MODEL.WEIGHTS of another architecture
# ------------------------------------------------------------------------------------------------
_MISMATCH = (r"WeightsMismatchError: MODEL\.WEIGHTS '{path}' fits (\d+) of the model's (\d+) "
             r"tensors \(the file holds \d+: \d+ wrongly shaped, \d+ not in the model; first "
             r"unloaded: \[[^]]*\]\); {need} must load\. It was saved for another architecture or "
             r"config\. Set MODEL\.ALLOW_PARTIAL_WEIGHTS True to go on with a partly loaded "
             r"model\.")


def test_eval_only_with_weights_of_another_architecture_is_refused(tmp_path, demo_env,
                                                                   other_arch_weights):
    """before: --eval-only loaded a few tensors, evaluated a random model: AP 0 and exit 0."""
    rc, out = _tool(TRAIN_NET, "--config-file", STUDENT, "--eval-only", *TINY,
                    "MODEL.WEIGHTS", other_arch_weights, "OUTPUT_DIR", "out",
                    cwd=tmp_path, env=demo_env)
    assert rc != 0, out
    m = re.search(_MISMATCH.format(path=re.escape(other_arch_weights), need="every one"), out)
    assert m, out
    loaded, total = int(m.group(1)), int(m.group(2))
    assert 0 < loaded < total // 2
    assert not (tmp_path / "out" / "inference").exists()


def test_eval_only_with_allow_partial_weights_goes_on(tmp_path, demo_env, other_arch_weights):
    """before: no way to say "I know" other than the silent default; now an explicit opt-in."""
    rc, out = _tool(TRAIN_NET, "--config-file", STUDENT, "--eval-only", *TINY,
                    "MODEL.WEIGHTS", other_arch_weights, "MODEL.ALLOW_PARTIAL_WEIGHTS", "True",
                    "DATASETS.TEST", "('nst_demo_voc_test',)", "OUTPUT_DIR", "out",
                    cwd=tmp_path, env=demo_env)
    assert rc == 0, out
    assert "WeightsMismatchError" not in out
    assert "copypaste: AP,AP50" in out


def test_training_from_weights_of_another_architecture_is_refused(tmp_path, demo_registered,
                                                                  other_arch_weights):
    """before: training started from a model of which 9 of 295 tensors had loaded."""
    opts = ["MODEL.WEIGHTS", other_arch_weights, "OUTPUT_DIR", str(tmp_path / "out"),
            "SOLVER.IMS_PER_BATCH", "2", "DATASETS.TEST", "()"]
    (tmp_path / "out").mkdir()
    trainer = DistillTrainer(load_nst_cfg(STUDENT, opts))
    with pytest.raises(ValueError) as info:
        trainer.resume_or_load(resume=False)
    assert type(info.value).__name__ == "WeightsMismatchError"
    m = re.search(_MISMATCH.format(path=re.escape(other_arch_weights), need="at least half")
                  .replace("WeightsMismatchError: ", ""), str(info.value))
    assert m, str(info.value)
    assert 2 * int(m.group(1)) < int(m.group(2))
    # the explicit opt-in goes on
    trainer = DistillTrainer(load_nst_cfg(STUDENT, opts + ["MODEL.ALLOW_PARTIAL_WEIGHTS", "True"]))
    trainer.resume_or_load(resume=False)


# ------------------------------------------------------------------------------------------------
# 7. A classifier's weights as MODEL.WEIGHTS
# ------------------------------------------------------------------------------------------------
def _classification_checkpoint(path):
    """A checkpoint as tools/train_cls.py writes it (nst_det.classification.trainer state_dict)."""
    classifier = build_classifier("demo_student", 10)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [30])
    rng = {"python": random.getstate(), "numpy": np.random.get_state(),
           "torch": torch.get_rng_state(), "cuda": []}
    torch.save({"model": classifier.state_dict(), "heads": {}, "epoch": 1, "iteration": 3,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": {}, "rng": [rng], "world_size": 1, "cfg": "MODEL:\n  ARCH: demo\n"},
               path)


def _torchvision_state_dict(path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)


@pytest.mark.parametrize("make", [_classification_checkpoint, _torchvision_state_dict],
                         ids=["nst_det_cls_checkpoint", "torchvision_resnet18"])
def test_classifier_weights_as_model_weights_name_the_converter(tmp_path, make):
    """before: a classifier file loaded 0 detector tensors and was evaluated as random weights."""
    path = str(tmp_path / "classifier.pth")
    make(path)
    cfg = load_nst_cfg(STUDENT, ["MODEL.WEIGHTS", path])
    with pytest.raises(ValueError, match=re.escape(
            f"'{path}' holds classifier weights (a checkpoint of tools/train_cls.py or a "
            f"torchvision state dict), not a Detectron2 model: convert it first with "
            f"`python tools/convert_cls_to_d2.py {path} OUT.pkl --fpn` and give OUT.pkl as "
            f"MODEL.WEIGHTS")) as info:
        DistillTrainer.build_student(cfg)
    assert type(info.value).__name__ == "WeightsMismatchError"


# ------------------------------------------------------------------------------------------------
# 8. A teacher-weights mismatch names each key once
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    """A FrozenBN teacher (demo base R-50 FPN, 64 FPN channels), a BN-trained file of the same
    teacher and a file of a teacher whose FPN is narrower (32 channels)."""
    root = tmp_path_factory.mktemp("teacher_files")
    for name in ("frozen", "bn", "narrow"):
        (root / name).mkdir()
    frozen = write_teacher_config(root / "frozen", "MODEL:\n  RESNETS:\n    NORM: FrozenBN\n")
    bn = save_random_teacher(write_teacher_config(root / "bn"), str(root / "bn.pth"))
    narrow = save_random_teacher(
        write_teacher_config(root / "narrow", "MODEL:\n  FPN:\n    OUT_CHANNELS: 32\n"),
        str(root / "narrow.pth"))
    teacher = build_teacher_model(frozen)
    return dict(teacher=teacher, bn=bn, narrow=narrow)


def _occurrences(key, text):
    return len(re.findall(rf"(?<![\w.]){re.escape(key)}(?![\w.])", text))


def load_teacher(model, path):
    """The strict loader as the detection teacher calls it (nst_det.detection.teacher)."""
    load_weights_strictly(model, path, "DISTILL.TEACHER.WEIGHTS", what="teacher weights file",
                          loaded_into="the teacher built from DISTILL.TEACHER.CONFIG")


def test_teacher_mismatch_names_each_wrongly_shaped_key_once(teacher_files, monkeypatch):
    """before: each wrongly shaped key was listed twice, also among the "missing keys"."""
    teacher, path = teacher_files["teacher"], teacher_files["narrow"]
    file_sd, model_sd = torch.load(path, weights_only=False)["model"], teacher.state_dict()
    wrong = [k for k in model_sd if k in file_sd and file_sd[k].shape != model_sd[k].shape]
    assert len(wrong) > 5
    with pytest.raises(WeightsMismatchError, match=re.escape(
            f"teacher weights file '{path}' (DISTILL.TEACHER.WEIGHTS) does not match the "
            f"teacher built from DISTILL.TEACHER.CONFIG: wrongly shaped keys {len(wrong)}: ")
            + r".*, \.\.\. \(" + str(len(wrong) - 5) + r" more\)\. Check that the config and the "
            r"weights belong to the same model\.$") as info:
        load_teacher(teacher, path)
    assert "missing keys" not in str(info.value)
    # every key listed: each wrongly shaped one appears exactly once, with both shapes
    monkeypatch.setattr(checkpointer_module, "_SHOWN_KEYS", 10_000)
    with pytest.raises(WeightsMismatchError) as info:
        load_teacher(teacher, path)
    message = str(info.value)
    assert "missing keys" not in message and "unexpected keys" not in message
    assert "num_batches_tracked" not in message
    for key in wrong:
        assert _occurrences(key, message) == 1, key
        assert (f"{key} (file {tuple(file_sd[key].shape)}, model {tuple(model_sd[key].shape)})"
                in message)


def test_bn_trained_teacher_loads_into_a_frozen_bn_teacher_without_complaint(teacher_files):
    """before: the BN step counters (num_batches_tracked) were reported as unexpected keys."""
    file_sd = torch.load(teacher_files["bn"], weights_only=False)["model"]
    assert any(k.endswith("num_batches_tracked") for k in file_sd)
    assert not any(k.endswith("num_batches_tracked") for k in teacher_files["teacher"].state_dict())
    load_teacher(teacher_files["teacher"], teacher_files["bn"])  # no error
    key = "backbone.bottom_up.res2.0.conv1.norm.running_mean"
    assert torch.equal(teacher_files["teacher"].state_dict()[key], file_sd[key])


# ------------------------------------------------------------------------------------------------
# 9. tools/convert_cls_to_d2.py
# ------------------------------------------------------------------------------------------------
def test_convert_tool_refuses_a_text_file_naming_it(tmp_path):
    """before: a raw UnpicklingError traceback that did not say which argument was wrong."""
    (tmp_path / "notacheckpoint.txt").write_text("these are not weights\n")
    rc, out = _tool(CONVERT, "notacheckpoint.txt", "out.pkl", cwd=tmp_path)
    assert rc != 0, out
    assert re.search(r"ValueError: classifier weights file 'notacheckpoint\.txt' is not a "
                     r"checkpoint or state dict that torch\.load can read \(\w+: ", out), out
    assert not (tmp_path / "out.pkl").exists()


def _load_convert_tool():
    spec = importlib.util.spec_from_file_location("convert_cls_to_d2", CONVERT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_tool_hints_build_a_backbone_that_loads_every_converted_weight(
        tmp_path, monkeypatch, capsys):
    """before: the printed config lacked the stem/res2 widths and stride: shapes did not match."""
    monkeypatch.chdir(tmp_path)
    resnet18 = torchvision.models.resnet18(weights=None)
    torch.save(resnet18.state_dict(), "resnet18.pth")
    _load_convert_tool().main(["resnet18.pth", "r18.pkl", "--arch", "resnet18", "--fpn"])
    lines = capsys.readouterr().out.splitlines()
    for line in ("  MODEL.RESNETS.STEM_OUT_CHANNELS 64", "  MODEL.RESNETS.RES2_OUT_CHANNELS 64",
                 "  MODEL.RESNETS.STRIDE_IN_1X1 False", "  MODEL.WEIGHTS r18.pkl"):
        assert line in lines
    cfg = get_nst_cfg()  # Detectron2's defaults (R-50, STRIDE_IN_1X1 True, ...)
    cfg.merge_from_list([item for line in lines[1:] for item in line.split(None, 1)])
    cfg.MODEL.DEVICE = "cpu"
    holder = nn.Module()
    holder.backbone = build_backbone(cfg)
    checkpointer = DetectionCheckpointer(holder)
    incompatible = checkpointer._load_model(checkpointer._load_file(cfg.MODEL.WEIGHTS))
    assert [k for k in incompatible.missing_keys if k.startswith("backbone.bottom_up.")] == []
    assert incompatible.incorrect_shapes == [] and incompatible.unexpected_keys == []
    assert torch.equal(holder.backbone.bottom_up.stem.conv1.weight, resnet18.conv1.weight)


# ------------------------------------------------------------------------------------------------
# 10. A full disk while saving
# ------------------------------------------------------------------------------------------------
def _save_writes_then_fails(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 half a checkpoint")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("how", ["oserror_from_save", "torch_writer_runtimeerror"])
def test_full_disk_while_saving_keeps_the_previous_file_and_says_so(tmp_path, monkeypatch, how):
    """before: a full disk left a truncated checkpoint (and a temp file) behind a raw error."""
    path = str(tmp_path / "model_final.pth")
    atomic.atomic_save({"x": torch.ones(3)}, path)
    before = (tmp_path / "model_final.pth").read_bytes()
    with monkeypatch.context() as m:
        if how == "oserror_from_save":
            m.setattr(atomic.torch, "save", _save_writes_then_fails)
        else:  # torch's own zip writer reports the failed write as a RuntimeError
            real_fdopen = os.fdopen
            m.setattr(atomic.os, "fdopen",
                      lambda fd, mode: DiskFullAfter(real_fdopen(fd, mode), 1000))
        with pytest.raises(OSError, match=re.escape(
                f"no space left on device while writing '{path}' (nothing was replaced: the "
                f"previous file, if any, is intact)")) as info:
            atomic.atomic_save({"x": torch.zeros(100_000)}, path)
    assert info.value.errno == errno.ENOSPC
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert os.listdir(tmp_path) == ["model_final.pth"]  # no temporary file left


def test_two_configs_naming_the_same_missing_file_each_list_their_own_folder(tmp_path):
    """before: the places tried were cached per (key, value) for the whole process, so the error
    for the first of two configs listed the second config's folder."""
    from nst_det.detection.load_config import load_nst_cfg
    from nst_det.engine.config_paths import missing_path_message

    base = os.path.join(REPO, "configs", "demo", "det_student_nst.yaml")
    cfgs = {}
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "child.yaml").write_text(
            f'_BASE_: "{base}"\nDISTILL:\n  TEACHER:\n    WEIGHTS: "teacher.pth"\n')
        cfgs[name] = load_nst_cfg(str(folder / "child.yaml"))
    for name, cfg in cfgs.items():
        key = "DISTILL.TEACHER.WEIGHTS"
        message = missing_path_message(key, cfg.DISTILL.TEACHER.WEIGHTS)
        assert f"'teacher.pth' ({key}) does not exist; tried: {tmp_path / name / 'teacher.pth'}, " \
            in message
        other = "b" if name == "a" else "a"
        assert str(tmp_path / other) not in message
