"""tools/train_cls.py as a user runs it: a subprocess started from a directory outside the
repository, a shipped ImageNet config (configs/imagenet/*.yaml) with only the overrides a CPU run
needs, and a tiny ImageNet in the official layout ($NST_DATASETS/imagenet/{train,val}/<wnid>/*.JPEG,
nst_det.research.official_layout.write_imagenet). Every bad input ends the run with a nonzero exit and
a message naming the culprit; MODEL.DEVICE is checked before anything is built."""
import os
import pickle
import runpy
import subprocess
import sys

import pytest
import torch
import yaml

import nst_det.classification  # noqa: F401  (first: makes Detectron2 usable here)
from nst_det.classification.models import build_classifier
from nst_det.research.official_layout import IMAGENET_CLASSES, write_imagenet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "train_cls.py")
NUM_CLASSES = len(IMAGENET_CLASSES)
# What a CPU run of a shipped ImageNet config needs: the device, the classes of the data at hand,
# a batch and an image size it can afford, one epoch, no worker processes.
CPU = ["MODEL.DEVICE", "cpu", "MODEL.NUM_CLASSES", str(NUM_CLASSES), "SOLVER.BATCH_SIZE", "4",
       "SOLVER.EPOCHS", "1", "DATA.CROP_SIZE", "32", "DATA.RESIZE_SIZE", "36",
       "DATA.NUM_WORKERS", "0", "LOG_PERIOD", "1"]


@pytest.fixture
def imagenet(tmp_path):
    """A fresh tiny ImageNet (3 classes, 4 train + 2 val images each) under tmp_path/datasets."""
    return write_imagenet(str(tmp_path / "datasets"), per_class_train=4, per_class_val=2, size=40)


def _config(name):
    return os.path.join(ROOT, "configs", "imagenet", name)


def _train_cls(tmp_path, config, *args):
    """Run tools/train_cls.py from tmp_path/cwd with $NST_DATASETS = tmp_path/datasets; returns
    (exit status, stdout + stderr)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    assert not str(cwd).startswith(ROOT + os.sep)
    env = dict(os.environ, NST_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="2")
    cmd = [sys.executable, TOOL, "--config-file", config, *args,
           "OUTPUT_DIR", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    return proc.returncode, proc.stdout


def _cut_in_half(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])


def _image(imagenet, split, class_index=0, k=0):
    folder = os.path.join(imagenet, split, IMAGENET_CLASSES[class_index])
    return os.path.join(folder, sorted(os.listdir(folder))[k])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_shipped_cuda_device_on_a_cpu_machine_stops_before_anything_is_built(tmp_path):
    code, out = _train_cls(tmp_path, _config("student_alone.yaml"),
                           "DATA.ROOT", str(tmp_path / "no_imagenet"))
    assert code != 0
    assert ("ValueError: MODEL.DEVICE is 'cuda' but this machine has no usable CUDA device: pass "
            "MODEL.DEVICE cpu on the command line") in out
    assert "ImageNet root" not in out  # stopped before the data
    assert not (tmp_path / "out").exists()  # and before the output folder


def test_training_skips_a_truncated_jpeg_and_zero_weights_need_no_teacher(tmp_path, imagenet):
    """nst_poly_kd.yaml with both weights 0 trains the student alone: its teacher file, which
    does not exist, is never asked for; a truncated training JPEG is skipped, named."""
    bad = _image(imagenet, "train", 1, 2)
    _cut_in_half(bad)
    code, out = _train_cls(tmp_path, _config("nst_poly_kd.yaml"), *CPU,
                           "DISTILL.NST.WEIGHT", "0.0", "DISTILL.KD.WEIGHT", "0.0",
                           "DISTILL.TEACHER.WEIGHTS", "teacher.pth")
    assert code == 0, out
    assert f"training image '{bad}' is truncated or unreadable (OSError: " in out, out
    assert "skipped, the next image is used in its place" in out
    assert "loss_cls" in out and "loss_nst" not in out and "loss_kd" not in out
    assert "epoch 1/1: val top-1" in out
    assert (tmp_path / "out" / "model_final.pth").is_file()
    # Detectron2's default_setup: the run's config in config.yaml, the log in log.txt
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert saved["OUTPUT_DIR"] == str(tmp_path / "out")
    assert saved["DISTILL"]["NST"]["WEIGHT"] == 0.0 and saved["MODEL"]["DEVICE"] == "cpu"
    assert "epoch 1/1: val top-1" in (tmp_path / "out" / "log.txt").read_text()


def test_distillation_with_a_teacher_file_next_to_its_yaml(tmp_path, imagenet):
    """A yaml outside the repository names its teacher 'teacher.pth' (beside the yaml): found
    from another working directory."""
    runs = tmp_path / "runs"
    runs.mkdir()
    torch.save(build_classifier("resnet18", NUM_CLASSES).state_dict(), runs / "teacher.pth")
    config = runs / "nst_poly_kd_r18.yaml"
    config.write_text(f'_BASE_: "{_config("nst_poly_kd.yaml")}"\n'
                      'DISTILL:\n  TEACHER:\n    NAME: "resnet18"\n    WEIGHTS: "teacher.pth"\n')
    code, out = _train_cls(tmp_path, str(config), *CPU)
    assert code == 0, out
    assert f"teacher resnet18: weights {runs / 'teacher.pth'}" in out
    assert "loss_nst" in out and "loss_kd" in out
    assert (tmp_path / "out" / "model_final.pth").is_file()


def test_eval_only_of_a_distilled_student_needs_no_teacher_file(tmp_path, imagenet):
    student = tmp_path / "student.pth"
    torch.save(build_classifier("inception_bn", NUM_CLASSES).state_dict(), student)
    code, out = _train_cls(tmp_path, _config("nst_poly_kd.yaml"), "--eval-only", *CPU,
                           "MODEL.STUDENT.WEIGHTS", str(student))
    assert code == 0, out
    assert "student on imagenet val: top-1" in out
    assert "teacher resnet101" not in out and "distillation:" not in out  # no teacher built


def test_train_and_val_class_folders_that_differ_are_refused(tmp_path, imagenet):
    os.rename(os.path.join(imagenet, "val", IMAGENET_CLASSES[2]),
              os.path.join(imagenet, "val", "n99999999"))
    code, out = _train_cls(tmp_path, _config("student_alone.yaml"), *CPU)
    assert code != 0
    train, val = os.path.join(imagenet, "train"), os.path.join(imagenet, "val")
    assert (f"ValueError: ImageNet class folders differ between '{train}' (3 folders) and "
            f"'{val}' (3 folders): only in train/: [{IMAGENET_CLASSES[2]}]; only in val/: "
            f"[n99999999]") in out, out


def test_num_classes_other_than_the_class_folders_is_refused(tmp_path, imagenet):
    i = CPU.index("MODEL.NUM_CLASSES")
    code, out = _train_cls(tmp_path, _config("student_alone.yaml"),
                           *CPU[:i], *CPU[i + 2:])  # the shipped 1000
    assert code != 0
    assert (f"ValueError: MODEL.NUM_CLASSES is 1000 but '{os.path.join(imagenet, 'val')}' has 3 "
            f"class folders: set MODEL.NUM_CLASSES 3") in out, out


def test_truncated_validation_jpeg_stops_the_run_naming_it(tmp_path, imagenet):
    bad = _image(imagenet, "val", 2, 1)  # the last one: read at the end of the epoch
    _cut_in_half(bad)
    code, out = _train_cls(tmp_path, _config("student_alone.yaml"), *CPU)
    assert code != 0
    assert (f"UnreadableImageError: validation image '{bad}' is truncated or unreadable "
            f"(OSError: ") in out, out
    assert "replace or remove the file" in out


def test_negative_distillation_weight_is_refused_before_anything_is_built(tmp_path, imagenet):
    code, out = _train_cls(tmp_path, _config("nst_poly_kd.yaml"), *CPU,
                           "DISTILL.KD.WEIGHT", "-1.0")
    assert code != 0
    assert ("ValueError: DISTILL.KD.WEIGHT is -1.0: a distillation weight must be a finite "
            "number >= 0 (0 turns the term off)") in out, out
    assert not (tmp_path / "out").exists()


def test_a_bad_config_stops_two_processes_before_either_starts(tmp_path):
    """The config is loaded and checked in the launching process: the error comes from there, not
    from a spawned process."""
    code, out = _train_cls(tmp_path, _config("nst_poly_kd.yaml"), "--num-gpus", "2", *CPU,
                           "DISTILL.KD.WEIGHT", "-1.0")
    assert code != 0
    assert "ValueError: DISTILL.KD.WEIGHT is -1.0" in out, out
    # torch.multiprocessing's report of an error raised in a spawned process
    assert "terminated with the following error" not in out, out
    assert not (tmp_path / "out").exists()


def test_the_config_is_loaded_once_and_handed_to_every_process(tmp_path, monkeypatch):
    """tools/train_cls.py --num-gpus 2 reads and checks its config once; each process gets that
    config (through pickle, as spawn hands it over) and reads no file again."""
    import nst_det.classification.config as config
    import nst_det.classification.trainer as trainer
    import nst_det.engine.launch as launch

    loaded, setups = [], []

    def load_cls_config(*args, **kwargs):
        loaded.append(args)
        return load(*args, **kwargs)

    def fake_launch(main_func, num_processes, num_machines=1, machine_rank=0, dist_url=None,
                    args=()):
        for _ in range(num_processes):
            main_func(*pickle.loads(pickle.dumps(args)))

    class Trainer:
        def __init__(self, cfg, eval_only, eval_teacher):
            setups.append(("trainer", cfg))

        def resume_or_load(self, resume):
            pass

        def train(self):
            return {}

    load = config.load_cls_config
    monkeypatch.setattr(config, "load_cls_config", load_cls_config)
    monkeypatch.setattr(launch, "launch", fake_launch)
    monkeypatch.setattr(trainer, "ClsTrainer", Trainer)
    monkeypatch.setattr(trainer, "default_cls_setup",
                        lambda cfg, args: setups.append(("setup", cfg)))
    monkeypatch.setattr(sys, "argv", [TOOL, "--num-gpus", "2", "--config-file",
                                      os.path.join(ROOT, "configs", "demo", "cls_student.yaml"),
                                      "OUTPUT_DIR", str(tmp_path / "out")])
    runpy.run_path(TOOL, run_name="__main__")
    assert len(loaded) == 1
    expected = load(os.path.join(ROOT, "configs", "demo", "cls_student.yaml"),
                    ["OUTPUT_DIR", str(tmp_path / "out")])
    assert [step for step, _ in setups] == ["setup", "trainer"] * 2
    for _, cfg in setups:
        assert cfg == expected and cfg.is_frozen()
