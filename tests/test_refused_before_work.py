"""Inputs that would make a run score the wrong thing, or die with a traceback that does not name
the culprit, are refused before any work, with an error naming the file, key or option.

Through the tools (``tools/train_net.py``, ``tools/train_cls.py``) as subprocesses run from a
folder outside the repository, except where a check is cheaper to reach in-process."""
import os
import subprocess
import sys

import pytest

from nst_det.engine.config_paths import REPO_ROOT

TRAIN_NET = os.path.join(REPO_ROOT, "tools", "train_net.py")
TRAIN_CLS = os.path.join(REPO_ROOT, "tools", "train_cls.py")
DEMO = os.path.join(REPO_ROOT, "configs", "demo")
DET_STUDENT = os.path.join(DEMO, "det_student.yaml")
CLS_STUDENT = os.path.join(DEMO, "cls_student.yaml")


def _tool(script, *args, cwd, env=None, timeout=240):
    """``<venv python> script args`` in ``cwd``; (exit status, stdout + stderr)."""
    env = dict(env or os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, script, *[str(a) for a in args]], cwd=str(cwd),
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout


def _last_line(out: str) -> str:
    return out.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------------
# 1. Configs: the yaml chain is read and checked before the merge, by both tools
# ------------------------------------------------------------------------------------------------

BAD_YAMLS = {
    # name: ({file: text}, the file given, the expected last line)
    "base_cycle": ({"a.yaml": "_BASE_: b.yaml\n", "b.yaml": "_BASE_: a.yaml\nSOLVER:\n  BASE_LR: 0.1\n"},
                   "a.yaml", "ConfigFileError: _BASE_ chain of config files loops: {d}/a.yaml -> "
                   "{d}/b.yaml -> {d}/a.yaml"),
    "empty": ({"empty.yaml": ""}, "empty.yaml",
              "ConfigFileError: config file 'empty.yaml' is empty: a config is a yaml mapping of "
              "keys (at least _BASE_: FILE)"),
    "syntax": ({"syntax.yaml": "SOLVER:\n  BASE_LR: [0.1\nMODEL:\n  DEVICE: cpu\n"}, "syntax.yaml",
               "ConfigFileError: config file 'syntax.yaml' is not valid yaml: line 3, column 6: "
               "expected ',' or ']', but got ':' (while parsing a flow sequence at line 2, column 12)"),
    "top_level_key_twice": (
        {"dup.yaml": "SOLVER:\n  BASE_LR: 0.1\nMODEL:\n  DEVICE: cpu\nSOLVER:\n  MAX_ITER: 5\n"},
        "dup.yaml", "ConfigFileError: config file 'dup.yaml': key SOLVER is given twice in one "
        "mapping (line 1 and line 5); yaml would keep the second and drop the first silently: "
        "write it once"),
    "nested_key_twice": (
        {"dup2.yaml": "SOLVER:\n  BASE_LR: 0.1\n  BASE_LR: 0.2\n"}, "dup2.yaml",
        "ConfigFileError: config file 'dup2.yaml': key SOLVER.BASE_LR is given twice in one "
        "mapping (line 2 and line 3); yaml would keep the second and drop the first silently: "
        "write it once"),
    "missing_base": ({"child.yaml": "_BASE_: nowhere.yaml\n"}, "child.yaml",
                     "ConfigFileError: config file 'child.yaml': its _BASE_ 'nowhere.yaml' does "
                     "not exist (looked for {d}/nowhere.yaml)"),
}


# Through both tools: the two cases that used to end in a RecursionError / a silently dropped key.
@pytest.mark.parametrize("tool, case", [("train_net", "base_cycle"), ("train_cls", "base_cycle"),
                                        ("train_net", "top_level_key_twice"),
                                        ("train_cls", "top_level_key_twice")])
def test_bad_config_files_through_the_tools_name_the_file(tmp_path, tool, case):
    files, given, expected = BAD_YAMLS[case]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    script = TRAIN_NET if tool == "train_net" else TRAIN_CLS
    code, out = _tool(script, "--config-file", given, cwd=tmp_path)
    assert code != 0
    assert _last_line(out).endswith(expected.format(d=os.path.realpath(tmp_path))), out[-2000:]


# Every case through the loaders of both stages (the same yaml_chain), in this process.
@pytest.mark.parametrize("stage", ["detection", "classification"])
@pytest.mark.parametrize("case", sorted(BAD_YAMLS))
def test_bad_config_files_are_refused_naming_the_file(tmp_path, monkeypatch, stage, case):
    from nst_det.classification.config import load_cls_config
    from nst_det.detection.load_config import load_nst_cfg

    files, given, expected = BAD_YAMLS[case]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    load = load_nst_cfg if stage == "detection" else load_cls_config
    with pytest.raises(Exception) as info:
        load(given)
    text = f"{type(info.value).__name__}: {info.value}"
    assert text == expected.format(d=os.path.realpath(tmp_path))


def test_merge_keys_and_anchors_are_no_duplicates(tmp_path):
    """yaml's ``<<: *anchor`` then an override of one of its keys is legitimate: no error."""
    from nst_det.engine.config_paths import yaml_chain

    (tmp_path / "ok.yaml").write_text(
        "X: &x\n  A: 1\n  B: 2\nY:\n  <<: *x\n  A: 3\n")
    (_, raw), = yaml_chain(str(tmp_path / "ok.yaml"))
    assert raw["Y"] == {"A": 3, "B": 2}


def test_classification_config_to_train_net_names_train_cls(tmp_path):
    code, out = _tool(TRAIN_NET, "--config-file", os.path.join(DEMO, "cls_student_nst.yaml"),
                      cwd=tmp_path)
    assert code != 0
    assert ("WrongStageConfigError: config file '" + os.path.join(DEMO, "cls_student_nst.yaml")
            + "' is a classification config: it sets MODEL.NUM_CLASSES, MODEL.STUDENT.NAME"
            in out), out[-2000:]
    assert _last_line(out).endswith(
        "keys of tools/train_cls.py only. Run it with tools/train_cls.py; tools/train_net.py "
        "reads detection configs")


def test_detection_config_to_train_cls_names_train_net(tmp_path):
    code, out = _tool(TRAIN_CLS, "--config-file", os.path.join(DEMO, "det_student_nst.yaml"),
                      cwd=tmp_path)
    assert code != 0
    assert "WrongStageConfigError: config file" in out and "is a detection config: it sets MODEL.META_ARCHITECTURE" in out, out[-2000:]
    assert _last_line(out).endswith(
        "keys of tools/train_net.py only. Run it with tools/train_net.py; tools/train_cls.py "
        "reads classification configs")


def test_one_key_of_the_other_stage_is_named(tmp_path):
    """A detection config that sets SOLVER.EPOCHS (a classification key) names it and the tool."""
    from nst_det.classification.config import get_cls_config
    from nst_det.detection.load_config import load_nst_cfg
    from nst_det.engine.config_paths import WrongStageConfigError

    (tmp_path / "mixed.yaml").write_text(f"_BASE_: {DET_STUDENT}\nSOLVER:\n  EPOCHS: 3\n")
    with pytest.raises(WrongStageConfigError, match=r"sets keys of the classification stage "
                       r"\(tools/train_cls.py\): SOLVER.EPOCHS; tools/train_net.py reads "
                       r"detection configs"):
        load_nst_cfg(str(tmp_path / "mixed.yaml"), classification_defaults=get_cls_config)


def test_max_iter_below_one_is_refused_naming_the_key(tmp_path):
    code, out = _tool(TRAIN_NET, "--config-file", DET_STUDENT, "SOLVER.MAX_ITER", "0",
                      "MODEL.DEVICE", "cpu", cwd=tmp_path)
    assert code != 0
    assert _last_line(out) == ("ValueError: SOLVER.MAX_ITER is 0: the number of training "
                               "iterations must be an integer >= 1"), out[-2000:]


def test_epochs_below_one_is_refused_naming_the_key(tmp_path):
    code, out = _tool(TRAIN_CLS, "--config-file", CLS_STUDENT, "SOLVER.EPOCHS", "0",
                      cwd=tmp_path)
    assert code != 0
    assert _last_line(out) == ("ValueError: SOLVER.EPOCHS is 0: the number of training epochs "
                               "must be an integer >= 1"), out[-2000:]


# ------------------------------------------------------------------------------------------------
# 2. Launching: impossible process counts and a rendezvous port in use, before any process starts
# ------------------------------------------------------------------------------------------------

LAUNCH_CASES = [
    (dict(num_processes_per_machine=0, num_machines=1, machine_rank=0),
     "--num-gpus is 0: the number of processes per machine must be >= 1 (1 without a GPU: "
     "MODEL.DEVICE cpu)"),
    (dict(num_processes_per_machine=1, num_machines=0, machine_rank=0),
     "--num-machines is 0: it must be >= 1"),
    (dict(num_processes_per_machine=1, num_machines=2, machine_rank=2),
     "--machine-rank is 2 but --num-machines is 2: the rank of this machine must be in 0..1"),
    (dict(num_processes_per_machine=1, num_machines=2, machine_rank=-1),
     "--machine-rank is -1 but --num-machines is 2: the rank of this machine must be in 0..1"),
]


@pytest.mark.parametrize("kwargs, message", LAUNCH_CASES)
def test_impossible_launch_options_are_refused_naming_the_option(kwargs, message):
    from nst_det.engine.launch import launch

    def never(*args):
        raise AssertionError("main_func must not run")

    with pytest.raises(ValueError) as info:
        launch(never, dist_url="auto", **kwargs)
    assert str(info.value) == message


def test_more_processes_than_gpus_is_refused_naming_the_option(monkeypatch):
    import torch

    from nst_det.engine.launch import launch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError) as info:
        launch(lambda: None, 4, dist_url="auto")
    assert str(info.value) == ("--num-gpus is 4 but this machine has 2 GPU(s) "
                               "(torch.cuda.device_count()): each process takes one GPU; give "
                               "--num-gpus 2 or fewer")


def test_machine_rank_outside_the_machines_through_train_net(tmp_path):
    code, out = _tool(TRAIN_NET, "--config-file", DET_STUDENT, "--num-machines", "2",
                      "--machine-rank", "2", "--dist-url", "tcp://127.0.0.1:1", "MODEL.DEVICE",
                      "cpu", cwd=tmp_path)
    assert code != 0
    assert _last_line(out) == ("ValueError: --machine-rank is 2 but --num-machines is 2: the rank "
                               "of this machine must be in 0..1"), out[-2000:]


def test_rendezvous_port_in_use_names_the_address_and_auto(tmp_path):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out = _tool(TRAIN_CLS, "--config-file", CLS_STUDENT, "--num-gpus", "2",
                          "--dist-url", f"tcp://127.0.0.1:{port}", "MODEL.DEVICE", "cpu",
                          cwd=tmp_path)
    assert code != 0
    assert _last_line(out) == (
        f"RuntimeError: --dist-url tcp://127.0.0.1:{port}: address 127.0.0.1:{port} is already "
        f"in use (another job's rendezvous?): give a free port, or --dist-url auto to pick one "
        f"(one machine only)"), out[-2000:]
    assert "Starting" not in out and "Rank" not in out


# ------------------------------------------------------------------------------------------------
# 3. Class lists compared by name: a test set with the training classes in another order
# ------------------------------------------------------------------------------------------------

SWAP = {1: 3, 3: 1, 16: 16}  # category ids of person and car exchanged in the test JSON


@pytest.fixture(scope="module")
def permuted_coco(tmp_path_factory):
    """A folder outside the repository with a custom COCO training set (person, car, bird), its
    validation images once as written (``t_val``: same classes, same order) and once with the
    category ids of person and car exchanged in categories and annotations alike
    (``t_val_perm``: thing_classes car, person, bird); ``cfg.yaml`` (the demo student on them,
    testing ``t_val_perm``) and ``w.pth``, weights of that student."""
    import json

    import nst_det.detection  # noqa: F401
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from nst_det.detection.load_config import load_nst_cfg
    from nst_det.research.official_layout import write_coco

    work = tmp_path_factory.mktemp("class_lists")
    write_coco(str(work), {"train2017": 2, "val2017": 2}, seed=1)
    ann = work / "coco" / "annotations"
    for split in ("train2017", "val2017"):
        content = json.loads((ann / f"instances_{split}.json").read_text())
        content["categories"] = [c for c in content["categories"] if c["id"] in SWAP]
        (ann / f"instances_{split}.json").write_text(json.dumps(content))
    content["categories"] = [dict(c, id=SWAP[c["id"]]) for c in content["categories"]]
    for a in content["annotations"]:
        a["category_id"] = SWAP[a["category_id"]]
    (ann / "instances_val2017_perm.json").write_text(json.dumps(content))
    (work / "cfg.yaml").write_text(
        f"_BASE_: {DET_STUDENT}\nMODEL:\n  DEVICE: cpu\nDATASETS:\n  COCO_CUSTOM: [\n"
        '    ["t_train", "coco/annotations/instances_train2017.json", "coco/train2017"],\n'
        '    ["t_val", "coco/annotations/instances_val2017.json", "coco/val2017"],\n'
        '    ["t_val_perm", "coco/annotations/instances_val2017_perm.json", "coco/val2017"]]\n'
        '  TRAIN: ("t_train",)\n  TEST: ("t_val_perm",)\nOUTPUT_DIR: out\n')
    model = build_model(load_nst_cfg(str(work / "cfg.yaml")))
    DetectionCheckpointer(model, str(work)).save("w")
    return work


PERMUTED_MESSAGE = (
    "ValueError: class lists differ: the model is trained on data set 't_train' "
    "(DATASETS.TRAIN), whose thing_classes are ['person', 'car', 'bird'], but data set "
    "'t_val_perm' (DATASETS.TEST) has ['car', 'person', 'bird'] (class 0 is 'person' in one and "
    "'car' in the other): its detections would be scored as the wrong classes. Use a test set "
    "with the training set's classes in its order, or set DATASETS.TEST_CLASS_MAP by_name to map "
    "the classes by name (same names, another order)")


def test_eval_only_on_a_test_set_of_permuted_classes_is_refused(permuted_coco):
    code, out = _tool(TRAIN_NET, "--config-file", "cfg.yaml", "--eval-only", "MODEL.WEIGHTS",
                      "w.pth", cwd=permuted_coco)
    assert code != 0
    assert _last_line(out) == PERMUTED_MESSAGE, out[-3000:]
    assert "Evaluation results" not in out


def test_training_with_a_test_set_of_permuted_classes_is_refused_before_training(permuted_coco):
    code, out = _tool(TRAIN_NET, "--config-file", "cfg.yaml", "SOLVER.MAX_ITER", "1",
                      "SOLVER.IMS_PER_BATCH", "2", "OUTPUT_DIR", "out_train", cwd=permuted_coco)
    assert code != 0
    assert _last_line(out) == PERMUTED_MESSAGE, out[-3000:]
    assert "Starting training" not in out
    assert not list((permuted_coco / "out_train").glob("*.pth"))


def test_eval_only_with_class_map_by_name_evaluates(permuted_coco):
    code, out = _tool(TRAIN_NET, "--config-file", "cfg.yaml", "--eval-only", "MODEL.WEIGHTS",
                      "w.pth", "DATASETS.TEST_CLASS_MAP", "by_name", "OUTPUT_DIR", "out_map",
                      cwd=permuted_coco)
    assert code == 0, out[-3000:]
    assert "Evaluation results for t_val_perm in csv format" in out


def test_training_sets_with_different_classes_are_refused(permuted_coco):
    from nst_det.detection.data.build import check_class_lists
    from nst_det.detection.load_config import load_nst_cfg

    cfg = load_nst_cfg(str(permuted_coco / "cfg.yaml"), ["DATASETS.TRAIN",
                                                         "('t_train', 't_val_perm')",
                                                         "DATASETS.TEST", "('t_val',)"])
    with pytest.raises(ValueError, match=r"class lists differ between the training sets: data "
                       r"set 't_train' \(DATASETS.TRAIN\) has thing_classes \['person', 'car', "
                       r"'bird'\] but data set 't_val_perm' \(DATASETS.TRAIN\) has \['car', "
                       r"'person', 'bird'\]"):
        check_class_lists(cfg, cfg.DATASETS.TEST)


def test_class_map_by_name_scores_perfect_detections_as_the_unpermuted_set(permuted_coco):
    """Detections equal to the ground truth, in the model's (training) class order: AP 100 on
    ``t_val``; on ``t_val_perm`` AP 100 with the map of DATASETS.TEST_CLASS_MAP by_name, and
    less without it (the number that used to be reported)."""
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Boxes, BoxMode, Instances

    from nst_det.detection.data.build import class_map_for_test
    from nst_det.detection.evaluation import ClassMapEvaluator, build_evaluator
    from nst_det.detection.load_config import load_nst_cfg

    out = str(permuted_coco / "out_unit")
    cfg = load_nst_cfg(str(permuted_coco / "cfg.yaml"), ["DATASETS.TEST_CLASS_MAP", "by_name",
                                                         "OUTPUT_DIR", out])
    images = DatasetCatalog.get("t_val")  # model order: t_val lists the training classes
    inputs, outputs = [], []
    for d in images:
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                 for a in d["annotations"]]
        instances = Instances((d["height"], d["width"]))
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.scores = torch.ones(len(boxes))
        instances.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]])
        inputs.append({"image_id": d["image_id"]})
        outputs.append({"instances": instances})

    def ap(evaluator):
        evaluator.reset()
        evaluator.process(inputs, outputs)
        return evaluator.evaluate()["bbox"]["AP"]

    mapping = class_map_for_test(cfg, "t_val_perm")
    assert mapping == [1, 0, 2]
    assert ap(build_evaluator(cfg, "t_val")) == pytest.approx(100.0)
    assert ap(ClassMapEvaluator(build_evaluator(cfg, "t_val_perm"), mapping)) == \
        pytest.approx(100.0)
    assert ap(build_evaluator(cfg, "t_val_perm")) < 90.0


# ------------------------------------------------------------------------------------------------
# 4. No score for an unloaded model
# ------------------------------------------------------------------------------------------------

def test_eval_only_without_weights_is_refused_naming_model_weights(permuted_coco):
    code, out = _tool(TRAIN_NET, "--config-file", "cfg.yaml", "--eval-only", "DATASETS.TEST",
                      "('t_val',)", cwd=permuted_coco)
    assert code != 0
    assert _last_line(out) == (
        "ValueError: --eval-only: MODEL.WEIGHTS is empty: there are no weights to evaluate (a "
        "model with random weights would be scored). Give MODEL.WEIGHTS FILE, or --resume to "
        "evaluate the newest checkpoint of OUTPUT_DIR"), out[-3000:]
    assert "Evaluation results" not in out


def test_eval_only_resume_without_a_checkpoint_is_refused_naming_output_dir(permuted_coco):
    code, out = _tool(TRAIN_NET, "--config-file", "cfg.yaml", "--eval-only", "--resume",
                      "OUTPUT_DIR", "nothing_here", "DATASETS.TEST", "('t_val',)",
                      cwd=permuted_coco)
    assert code != 0
    assert _last_line(out) == (
        "ValueError: --eval-only --resume: OUTPUT_DIR 'nothing_here' holds no checkpoint and "
        "MODEL.WEIGHTS is empty: there are no weights to evaluate (a model with random weights "
        "would be scored). Give the OUTPUT_DIR of a trained run, or MODEL.WEIGHTS FILE"), out[-3000:]


def test_classification_eval_only_without_weights_is_refused(tmp_path):
    code, out = _tool(TRAIN_CLS, "--config-file", CLS_STUDENT, "--eval-only", cwd=tmp_path)
    assert code != 0
    assert _last_line(out) == (
        "ValueError: --eval-only: MODEL.STUDENT.WEIGHTS is empty: there are no weights to "
        "evaluate (a model with random weights would be scored). Give MODEL.STUDENT.WEIGHTS "
        "FILE, or --resume to evaluate the newest checkpoint of OUTPUT_DIR"), out[-3000:]


def test_weights_that_load_no_tensor_are_refused(permuted_coco):
    import torch

    torch.save({"model": {}}, str(permuted_coco / "empty.pth"))
    code, out = _tool(TRAIN_NET, "--config-file", "cfg.yaml", "--eval-only", "MODEL.WEIGHTS",
                      "empty.pth", "DATASETS.TEST", "('t_val',)", cwd=permuted_coco)
    assert code != 0
    assert _last_line(out).startswith(
        f"nst_det.engine.checkpointer.WeightsMismatchError: MODEL.WEIGHTS "
        f"'{permuted_coco / 'empty.pth'}' fits 0 of the model's "), out[-3000:]
    assert "Evaluation results" not in out


def test_resume_from_a_run_of_another_architecture_is_refused_before_training(permuted_coco):
    """OUTPUT_DIR holds the final checkpoint of the demo teacher (a wider detector): --resume of
    the student used to print hundreds of skipped keys, then fail with a shape error in the
    first step."""
    import nst_det.detection  # noqa: F401
    from detectron2.modeling import build_model

    from nst_det.detection.load_config import load_nst_cfg
    from nst_det.engine.checkpointer import AtomicCheckpointer

    other = permuted_coco / "other_run"
    model = build_model(load_nst_cfg(os.path.join(DEMO, "det_teacher.yaml")))
    AtomicCheckpointer(model, str(other)).save("model_final")
    code, out = _tool(TRAIN_NET, "--config-file", "cfg.yaml", "--resume", "OUTPUT_DIR",
                      "other_run", "DATASETS.TEST", "('t_val',)", "SOLVER.MAX_ITER", "2",
                      "SOLVER.IMS_PER_BATCH", "2", cwd=permuted_coco)
    assert code != 0
    last = _last_line(out)
    assert last.startswith(
        "nst_det.engine.checkpointer.WeightsMismatchError: --resume: checkpoint "
        "'other_run/model_final.pth' in OUTPUT_DIR 'other_run' fits 9 of the model's 295 tensors "
        "(the file holds 348: 286 wrongly shaped, 0 not in the model;"), out[-3000:]
    assert last.endswith("every one must load. It is a checkpoint of another architecture or "
                         "data set: give this config another OUTPUT_DIR, or drop --resume")
    assert "Starting training" not in out


def test_resume_check_runs_before_the_optimizer_is_loaded(tmp_path):
    """The classification stage's checkpointer ("complete"): a checkpoint of another network in
    OUTPUT_DIR is refused naming it, before the optimizer state (which would fail unnamed)."""
    import torch
    from torch import nn

    from nst_det.engine.checkpointer import AtomicCheckpointer, WeightsMismatchError

    old = nn.Linear(3, 2)
    AtomicCheckpointer(old, str(tmp_path), optimizer=torch.optim.SGD(old.parameters(), lr=0.1)
                       ).save("model_0000009")
    new = nn.Sequential(nn.Linear(4, 2))
    optimizer = torch.optim.SGD(new.parameters(), lr=0.1)
    checkpointer = AtomicCheckpointer(new, str(tmp_path), weights_check="complete",
                                      weights_key="MODEL.STUDENT.WEIGHTS", optimizer=optimizer)
    with pytest.raises(WeightsMismatchError, match=r"--resume: checkpoint '.*model_0000009.pth' "
                       r"in OUTPUT_DIR '.*' fits 0 of the model's 2 tensors \(the file holds 2: "
                       r"0 wrongly shaped, 2 not in the model"):
        checkpointer.resume_or_load("", resume=True)
