"""One vocabulary for both stages: the DISTILL keys of nst_det/engine/distill_config.py, their
checks, and the keys of earlier versions refused with their new names (in yaml files, through
_BASE_, and on the command line of tools/train_net.py and tools/train_cls.py)."""
import glob
import math
import os
import re
import subprocess
import sys

import pytest

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from fvcore.common.config import CfgNode
from nst_det.classification import config as cls_config
from nst_det.classification.config import get_cls_config, load_cls_config
from nst_det.classification.distill import distill_terms
from nst_det.detection import config as det_config
from nst_det.detection.load_config import distills, get_nst_cfg, load_nst_cfg
from nst_det.engine import distill_config
from nst_det.engine.distill_config import REMOVED_KEYS, RENAMED_KEYS, add_distill_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DET_STUDENT_NST = os.path.join(REPO, "configs", "demo", "det_student_nst.yaml")
CLS_STUDENT_NST = os.path.join(REPO, "configs", "demo", "cls_student_nst.yaml")
DET_ONLY = {"TEACHER.CONFIG", "RESIZE", "MATCH_LEVELS"}
CLS_ONLY = {"TEACHER.NAME", "AT.WEIGHT", "AT.P", "FITNET.WEIGHT"}


def _flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        if isinstance(value, CfgNode):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("module", [distill_config, det_config, cls_config],
                         ids=["engine", "detection", "classification"])
def test_every_key_has_a_comment_above_it(module):
    lines = open(module.__file__, encoding="utf-8").read().splitlines()
    assignments = [i for i, line in enumerate(lines)
                   if re.match(r"\s*_C\.[A-Z0-9_.]+ = ", line) and "CN()" not in line]
    assert assignments
    assert [lines[i].strip() for i in assignments if not lines[i - 1].strip().startswith("#")] == []


def test_both_stages_share_the_same_distill_keys_with_the_same_defaults():
    shared = _flat(add_distill_config(CfgNode()).DISTILL)
    det, cls = _flat(get_nst_cfg().DISTILL), _flat(get_cls_config().DISTILL)
    assert {k: det[k] for k in shared} == shared
    assert {k: cls[k] for k in shared} == shared
    assert set(det) - set(shared) == DET_ONLY
    assert set(cls) - set(shared) == CLS_ONLY
    assert {"NST.WEIGHT", "NST.KERNEL", "NST.DEGREE", "NST.COEF", "NST.SIGMA2", "KD.WEIGHT",
            "KD.TEMPERATURE", "WARMUP_ITERS", "STUDENT_FEATURES", "TEACHER_FEATURES",
            "LEVEL_WEIGHTS", "TEACHER.WEIGHTS", "TEACHER.ALLOW_OTHER_ON_RESUME",
            "TEACHER.PRECISION", "TEACHER.CHANNELS_LAST", "TEACHER.FOLD_NORMS"} == set(shared)
    # every term off by default, in both stages
    assert [v for k, v in det.items() if k.endswith("WEIGHT")] == [0.0, 0.0]
    assert [v for k, v in cls.items() if k.endswith("WEIGHT")] == [0.0, 0.0, 0.0, 0.0]


def test_the_documented_table_lists_every_distill_key():
    text = open(os.path.join(REPO, "docs", "DISTILLATION.md"), encoding="utf-8").read()
    keys = set(_flat(get_nst_cfg().DISTILL)) | set(_flat(get_cls_config().DISTILL))
    assert [k for k in sorted(keys) if f"`DISTILL.{k}`" not in text] == []
    assert [k for k in RENAMED_KEYS if f"`{k}`" not in text] == []


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"),
                                                  recursive=True)))
def test_no_shipped_config_uses_an_old_key(path):
    text = open(path, encoding="utf-8").read()
    assert "MODEL.DISTILL" not in text and "TEACHER_CONFIG" not in text
    distill_config.check_renamed_keys(path)


def _yaml(folder, base, body):
    path = os.path.join(str(folder), "old.yaml")
    with open(path, "w") as f:
        f.write(f'_BASE_: "{base}"\n{body}')
    return path


def _nested(key, value):
    """The yaml text that sets dotted ``key`` to ``value``."""
    parts = key.split(".")
    lines = [f"{'  ' * i}{p}:" for i, p in enumerate(parts[:-1])]
    lines.append(f"{'  ' * (len(parts) - 1)}{parts[-1]}: {value}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("old", sorted(RENAMED_KEYS))
def test_every_old_key_in_a_yaml_is_refused_naming_file_and_new_key(tmp_path, old):
    loader, base = ((load_cls_config, CLS_STUDENT_NST) if old.startswith("MODEL.TEACHER")
                    or old == "MODEL.STUDENT.TAP" else (load_nst_cfg, DET_STUDENT_NST))
    path = _yaml(tmp_path, base, _nested(old, "1.0"))
    with pytest.raises(KeyError, match=re.escape(
            f"{old} (set in {path}) was renamed {RENAMED_KEYS[old]}: write {RENAMED_KEYS[old]}")):
        loader(path)


def test_old_key_in_a_base_yaml_names_the_base_file(tmp_path):
    base = _yaml(tmp_path, DET_STUDENT_NST, _nested("MODEL.DISTILL.LOSS.KERNEL", '"gaussian"'))
    child = tmp_path / "child.yaml"
    child.write_text(f'_BASE_: "{base}"\nSOLVER:\n  MAX_ITER: 3\n')
    with pytest.raises(KeyError, match=re.escape(
            f"MODEL.DISTILL.LOSS.KERNEL (set in {base}) was renamed DISTILL.NST.KERNEL")):
        load_nst_cfg(str(child))


def test_kd_enabled_is_refused_saying_kd_is_on_by_its_weight(tmp_path):
    path = _yaml(tmp_path, DET_STUDENT_NST, _nested("MODEL.DISTILL.KD.ENABLED", "True"))
    with pytest.raises(KeyError, match=re.escape(
            f"MODEL.DISTILL.KD.ENABLED (set in {path}) was removed: "
            f"{REMOVED_KEYS['MODEL.DISTILL.KD.ENABLED']}")):
        load_nst_cfg(path)
    with pytest.raises(KeyError, match=r"MODEL\.DISTILL\.KD\.ENABLED \(given on the command line\) "
                                       r"was removed: KD is on when DISTILL\.KD\.WEIGHT is > 0"):
        load_nst_cfg(DET_STUDENT_NST, ["MODEL.DISTILL.KD.ENABLED", "True"])


def test_an_unknown_key_of_the_old_groups_points_at_distill():
    with pytest.raises(KeyError, match=r"MODEL\.DISTILL\.FOO \(given on the command line\) is no "
                                       r"key any more: the distillation keys are under DISTILL"):
        load_nst_cfg(DET_STUDENT_NST, ["MODEL.DISTILL.FOO", "1"])


def _tool(script, *args, cwd):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", script), *args],
                          cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    return proc.returncode, proc.stdout


def test_train_net_refuses_an_old_key_in_a_yaml_naming_the_new_one(tmp_path):
    """Through the real tool, from outside the repo: the user's yaml of an earlier version."""
    path = _yaml(tmp_path, DET_STUDENT_NST, _nested("MODEL.DISTILL.WEIGHT", "4.0"))
    rc, out = _tool("train_net.py", "--config-file", path, "MODEL.DEVICE", "cpu", cwd=tmp_path)
    assert rc != 0, out
    assert (f"KeyError: 'MODEL.DISTILL.WEIGHT (set in {path}) was renamed DISTILL.NST.WEIGHT: "
            f"write DISTILL.NST.WEIGHT'") in out, out
    assert list(tmp_path.iterdir()) == [tmp_path / "old.yaml"]  # nothing was built or written


def test_train_cls_refuses_an_old_key_on_the_command_line_naming_the_new_one(tmp_path):
    rc, out = _tool("train_cls.py", "--config-file", CLS_STUDENT_NST, "MODEL.TEACHER.WEIGHTS",
                    "teacher.pth", cwd=tmp_path)
    assert rc != 0, out
    assert ("KeyError: 'MODEL.TEACHER.WEIGHTS (given on the command line) was renamed "
            "DISTILL.TEACHER.WEIGHTS: write DISTILL.TEACHER.WEIGHTS'") in out, out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("opts, message", [
    (["DISTILL.LEVEL_WEIGHTS", "[1.0, 2.0]"],
     r"DISTILL\.LEVEL_WEIGHTS \[1\.0, 2\.0\] needs one weight per entry of "
     r"DISTILL\.STUDENT_FEATURES \['p2', 'p3', 'p4', 'p5', 'p6'\]"),
    (["DISTILL.TEACHER_FEATURES", "['p2']"],
     r"DISTILL\.STUDENT_FEATURES \['p2', 'p3', 'p4', 'p5', 'p6'\] and DISTILL\.TEACHER_FEATURES "
     r"\['p2'\] must name the same number"),
    (["DISTILL.NST.KERNEL", "rbf"], r"DISTILL\.NST: nst_loss: kernel must be one of"),
    (["DISTILL.KD.TEMPERATURE", "0.0"], r"DISTILL\.KD\.TEMPERATURE is 0\.0: the KD temperature"),
    (["DISTILL.WARMUP_ITERS", "-1"], r"DISTILL\.WARMUP_ITERS is -1: it must be >= 0"),
])
def test_distill_settings_that_cannot_work_are_refused_at_load_time_in_detection(opts, message):
    with pytest.raises(ValueError, match=message):
        load_nst_cfg(DET_STUDENT_NST, opts)


@pytest.mark.parametrize("opts, message", [
    (["DISTILL.STUDENT_FEATURES", "['block2', 'block3']", "DISTILL.TEACHER_FEATURES",
      "['block2', 'block3']", "DISTILL.LEVEL_WEIGHTS", "[1.0]"],
     r"DISTILL\.LEVEL_WEIGHTS \[1\.0\] needs one weight per entry"),
    (["DISTILL.AT.WEIGHT", "-1.0"], r"DISTILL\.AT\.WEIGHT is -1\.0: a distillation weight"),
    (["DISTILL.FITNET.WEIGHT", "1e999"], r"DISTILL\.FITNET\.WEIGHT is inf: a distillation weight"),
])
def test_distill_settings_that_cannot_work_are_refused_at_load_time_in_classification(opts,
                                                                                       message):
    with pytest.raises(ValueError, match=message):
        load_cls_config(CLS_STUDENT_NST, opts)


def test_a_term_is_on_when_its_weight_is_positive_in_both_stages():
    det = load_nst_cfg(DET_STUDENT_NST, ["DISTILL.NST.WEIGHT", "0.0"])
    assert not distills(det)
    assert distills(load_nst_cfg(DET_STUDENT_NST, ["DISTILL.NST.WEIGHT", "0.0",
                                                   "DISTILL.KD.WEIGHT", "0.5"]))
    cls = load_cls_config(CLS_STUDENT_NST, ["DISTILL.NST.WEIGHT", "0.0"])
    assert distill_terms(cls) == []
    assert distill_terms(load_cls_config(CLS_STUDENT_NST, ["DISTILL.KD.WEIGHT", "0.5"])) == \
        ["nst", "kd"]


def test_classification_level_weights_scale_each_tapped_pair(tmp_path):
    """DISTILL.LEVEL_WEIGHTS weights each pair of the feature terms, as in detection."""
    import torch

    from nst_det.classification.distill import build_distillation
    from nst_det.classification.models import build_classifier
    from nst_det.losses import nst_loss

    torch.manual_seed(0)
    teacher_file = str(tmp_path / "teacher.pth")
    torch.save(build_classifier("demo_teacher", 10).state_dict(), teacher_file)
    layers = "['block2', 'block3']"
    common = ["DISTILL.TEACHER.WEIGHTS", teacher_file, "DISTILL.STUDENT_FEATURES", layers,
              "DISTILL.TEACHER_FEATURES", layers, "DISTILL.NST.WEIGHT", "1.0"]
    images, targets = torch.randn(4, 3, 24, 24), torch.arange(4)
    values = {}
    for weights in ("[]", "[2.0, 0.5]"):
        cfg = load_cls_config(CLS_STUDENT_NST, common + ["DISTILL.LEVEL_WEIGHTS", weights])
        torch.manual_seed(1)
        student, teacher = build_distillation(cfg, input_shape=(3, 24, 24))
        student.eval()
        with torch.no_grad():
            _, s_feats = student.taps(images)
            t_logits, t_feats = teacher(images)
            loss = student(images, targets, (t_logits, t_feats))["loss_nst"].item()
        per_pair = [nst_loss(s_feats[n].double(), t_feats[n].double()).item()
                    for n in ("block2", "block3")]
        values[weights] = (loss, per_pair)
    loss, (l2, l3) = values["[]"]
    assert math.isclose(loss, l2 + l3, rel_tol=1e-5)
    loss, (l2, l3) = values["[2.0, 0.5]"]
    assert math.isclose(loss, 2.0 * l2 + 0.5 * l3, rel_tol=1e-5)
