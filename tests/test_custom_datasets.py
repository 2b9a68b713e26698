"""Tests of nst_det/detection/data/custom.py: data sets registered from DATASETS.COCO_CUSTOM and
DATASETS.VOC_CUSTOM (docs/DETECTION.md, "Your own data set, no Python").

The documented yaml and commands are run word for word from a working directory outside the
repository, on tiny sets in COCO and VOC layout written where the yaml says (only the CPU
overrides are added, and ``--num-gpus 2``: each of the two processes registers the sets itself).
"""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from detectron2.data import DatasetCatalog, MetadataCatalog
from nst_det.research.official_layout import write_coco, write_voc
from nst_det.detection.data.custom import register_custom_datasets
from nst_det.detection.evaluation import build_evaluator
from nst_det.detection.evaluation.evaluators import COCODetectionEvaluator, VOCDetectionEvaluator
from nst_det.detection.load_config import get_nst_cfg, load_nst_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "DETECTION.md")
SECTION = "## Your own data set, no Python"
# The three classes write_coco / write_voc draw (COCO ids 1, 3 and 16), in the COCO JSON's id order.
CLASSES = {1: "person", 3: "car", 16: "bird"}
CPU = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "BN",
       "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64",
       "INPUT.MAX_SIZE_TEST", "96", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
       "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0",
       "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
       "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]


def documented_section():
    """(the yaml, the command lines) of the docs' section on one's own data sets."""
    text = open(DOC, encoding="utf-8").read()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", len(SECTION))]
    yaml_text = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in bash.splitlines()]
    return yaml_text, [c for c in commands if c]


def write_user_data(dirname):
    """``dirname/my_data``: a COCO set (train2017, val2017) reduced to the three drawn categories
    and a VOC2007 folder (trainval, test), as the documented yaml names them."""
    data = os.path.join(dirname, "my_data")
    coco = write_coco(data, {"train2017": 4, "val2017": 2}, seed=1)
    for split in ("train2017", "val2017"):
        path = os.path.join(coco, "annotations", f"instances_{split}.json")
        with open(path) as f:
            content = json.load(f)
        content["categories"] = [c for c in content["categories"] if c["id"] in CLASSES]
        with open(path, "w") as f:
            json.dump(content, f)
    write_voc(data, 2007, {"trainval": 4, "test": 2}, seed=1)


def run_tool(work, tokens, *extra):
    """A documented ``python tools/...`` command from ``work`` (the venv's python, the repo's
    tool), stdout and stderr merged."""
    argv = [sys.executable, os.path.join(REPO, tokens[1]), *tokens[2:], *extra]
    return subprocess.run(argv, cwd=str(work), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=400, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The documented yaml (``_BASE_`` at this repository) and data, trained with the documented
    command on two CPU processes."""
    work = tmp_path_factory.mktemp("user")
    write_user_data(str(work))
    yaml_text, commands = documented_section()
    (work / "my_data.yaml").write_text(yaml_text.replace("/path/to/nst_det", REPO))
    train = next(c for c in commands if c[1] == "tools/train_net.py")
    proc = run_tool(work, train, "--num-gpus", "2", *CPU)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return dict(work=work, stdout=proc.stdout, commands=commands)


def test_documented_config_trains_and_evaluates_both_sets(trained):
    """Both custom test sets were evaluated, each by its own evaluator, after training on both
    custom training sets (in each of the two processes: the sets are registered there)."""
    stdout = trained["stdout"]
    for name in ("my_coco_val", "my_voc_test"):
        assert f"Evaluation results for {name} in csv format" in stdout, stdout[-4000:]
    assert "Evaluating my_voc_test with the VOC 2007 metric" in stdout
    out = trained["work"] / "output" / "my_data"
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    keys = set().union(*metrics)
    assert {"my_coco_val/bbox/AP", "my_coco_val/bbox/AR100", "my_voc_test/bbox/AP50",
            "my_voc_test/bbox/AP50_11point", "my_voc_test/bbox/AP50-bird"} <= keys
    assert (out / "inference" / "my_coco_val" / "coco_instances_results.json").is_file()
    assert (out / "log.txt.rank1").is_file()  # the second process ran (and found the sets)


def test_documented_eval_and_visualize_commands_register_from_the_config(trained):
    """tools/eval_predictions.py and tools/visualize_predictions.py with --config-file know the
    config's sets (the documented command lines, run from the user's folder)."""
    (eval_cmd,) = [c for c in trained["commands"] if c[1] == "tools/eval_predictions.py"]
    (draw_cmd,) = [c for c in trained["commands"] if c[1] == "tools/visualize_predictions.py"]
    evaluated = run_tool(trained["work"], eval_cmd, "--output", "metrics_of_predictions.json")
    assert evaluated.returncode == 0, evaluated.stdout[-3000:]
    assert "my_coco_val" in evaluated.stdout
    results = json.loads((trained["work"] / "metrics_of_predictions.json").read_text())
    assert {"AP", "AP50", "AR100", "AP-person"} <= set(results)
    drawn = run_tool(trained["work"], draw_cmd)
    assert drawn.returncode == 0, drawn.stdout[-3000:]
    pictures = trained["work"] / draw_cmd[draw_cmd.index("--output") + 1]
    assert len([p for p in os.listdir(pictures) if p.endswith(".png")]) == 2
    assert f"wrote 2 pictures to {draw_cmd[draw_cmd.index('--output') + 1]}" in drawn.stdout


def test_missing_json_names_the_key_the_entry_and_the_places_tried(tmp_path):
    """Through tools/train_net.py: a JSON_FILE that does not exist stops the command before
    anything is built, with a FileNotFoundError naming all of them."""
    work = tmp_path / "user"
    (tmp_path / "configs").mkdir()
    work.mkdir()
    config = tmp_path / "configs" / "mine.yaml"
    config.write_text(
        f'_BASE_: "{os.path.join(REPO, "configs", "demo", "det_student.yaml")}"\n'
        "DATASETS:\n"
        '  COCO_CUSTOM: [["mine_val", "no_such/instances_val.json", "."]]\n'
        '  TEST: ("mine_val",)\n')
    proc = run_tool(work, ["python", "tools/train_net.py", "--config-file", str(config),
                           "--eval-only"])
    assert proc.returncode != 0
    expected = (f"FileNotFoundError: data set 'mine_val': JSON_FILE 'no_such/instances_val.json' "
                f"(DATASETS.COCO_CUSTOM[0]) does not exist; tried: "
                f"{tmp_path / 'configs' / 'no_such' / 'instances_val.json'}, "
                f"{work / 'no_such' / 'instances_val.json'}, "
                f"{os.path.join(REPO, 'no_such', 'instances_val.json')}")
    assert expected in proc.stdout, proc.stdout[-3000:]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A COCO set and a VOC2007 folder, for the in-process tests."""
    root = tmp_path_factory.mktemp("data")
    write_user_data(str(root))
    return root / "my_data"


def _yaml(tmp_path, coco=(), voc=()):
    path = tmp_path / "sets.yaml"
    path.write_text(f"DATASETS:\n  COCO_CUSTOM: {json.dumps(list(coco))}\n"
                    f"  VOC_CUSTOM: {json.dumps(list(voc))}\n")
    return str(path)


@pytest.fixture
def forget():
    """Names to remove from Detectron2's catalogs after the test."""
    names = []
    yield names
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


def test_paths_are_read_relative_to_the_yaml_then_the_current_directory(data, tmp_path,
                                                                         monkeypatch, forget):
    """The yaml next to the data names it relatively, from any working directory; a path given
    on the command line is read from the current directory."""
    forget += ["t_rel_coco", "t_rel_voc"]
    config = _yaml(data, [["t_rel_coco", "coco/annotations/instances_val2017.json", "coco/val2017"]])
    monkeypatch.chdir(tmp_path)
    cfg = load_nst_cfg(config)
    assert cfg.DATASETS.COCO_CUSTOM == [["t_rel_coco", str(data / "coco" / "annotations" / "instances_val2017.json"),
                                         str(data / "coco" / "val2017")]]
    monkeypatch.chdir(data.parent)
    cfg = load_nst_cfg(_yaml(tmp_path), ["DATASETS.VOC_CUSTOM",
                                         '[["t_rel_voc", "my_data/VOC2007", "test", 2007, "person,car,bird"]]'])
    assert cfg.DATASETS.VOC_CUSTOM[0][1] == str(data / "VOC2007")
    assert len(DatasetCatalog.get("t_rel_voc")) == 2 and len(DatasetCatalog.get("t_rel_coco")) == 2


def test_each_set_gets_its_evaluator_and_metric(data, tmp_path, forget):
    """COCO sets: the COCO evaluator; VOC sets: the VOC evaluator, 11-point AP for 2007 only."""
    forget += ["t_ev_coco", "t_ev_07", "t_ev_12"]
    voc = str(data / "VOC2007")
    cfg = load_nst_cfg(_yaml(tmp_path, [["t_ev_coco", str(data / "coco/annotations/instances_val2017.json"),
                                          str(data / "coco/val2017")]],
                             [["t_ev_07", voc, "test", 2007, "person,car,bird"],
                              ["t_ev_12", voc, "test", "2012", ["person", "car", "bird"]]]))
    assert isinstance(build_evaluator(cfg, "t_ev_coco", str(tmp_path / "ev")), COCODetectionEvaluator)
    assert DatasetCatalog.get("t_ev_coco")[0]["annotations"]
    assert MetadataCatalog.get("t_ev_coco").thing_classes == list(CLASSES.values())
    for name, is_2007 in (("t_ev_07", True), ("t_ev_12", False)):
        evaluator = build_evaluator(cfg, name)
        assert isinstance(evaluator, VOCDetectionEvaluator) and evaluator._is_2007 is is_2007
        assert MetadataCatalog.get(name).thing_classes == ["person", "car", "bird"]


@pytest.mark.parametrize("key, entry, message", [
    ("COCO_CUSTOM", ["t_bad", "a.json"], r"DATASETS.COCO_CUSTOM\[0\] is \['t_bad', 'a.json'\]: "
                                         r"each entry of DATASETS.COCO_CUSTOM is \[NAME, JSON_FILE, IMAGE_ROOT\]"),
    ("COCO_CUSTOM", "t_bad", r"DATASETS.COCO_CUSTOM\[0\] is 't_bad'"),
    ("COCO_CUSTOM", ["", "a.json", "img"], r"DATASETS.COCO_CUSTOM\[0\] .*NAME must be a non-empty"),
    ("VOC_CUSTOM", ["t_bad", "VOC2007", "test", 2007, ""], r"DATASETS.VOC_CUSTOM\[0\] .*CLASSES"),
    ("VOC_CUSTOM", ["t_bad", "VOC2007", "test", 2007, []], r"DATASETS.VOC_CUSTOM\[0\] .*CLASSES"),
    ("VOC_CUSTOM", ["t_bad", "VOC2007", "test", 2007, "a,,b"], r"DATASETS.VOC_CUSTOM\[0\] .*CLASSES"),
    ("VOC_CUSTOM", ["t_bad", "VOC2007", "test", "07a", "a"], r"DATASETS.VOC_CUSTOM\[0\] .*YEAR must be an integer"),
    ("VOC_CUSTOM", ["t_bad", "VOC2007", "test", 2007.5, "a"], r"DATASETS.VOC_CUSTOM\[0\] .*YEAR"),
    ("VOC_CUSTOM", ["t_bad", "VOC2007", "test", 2007], r"DATASETS.VOC_CUSTOM\[0\] .*\[NAME, DIRNAME, SPLIT, YEAR, CLASSES\]"),
])
def test_malformed_entry_is_a_value_error_naming_key_and_entry(data, key, entry, message):
    """Checked before any file is looked at: the entry's files exist or not, the error is this."""
    with pytest.raises(ValueError, match=message):
        load_nst_cfg(_yaml(data), [f"DATASETS.{key}", repr([entry])])
    assert "t_bad" not in DatasetCatalog.list()


def test_voc_folder_without_its_split_names_the_missing_file(data):
    with pytest.raises(FileNotFoundError, match=r"data set 't_nosplit' \(DATASETS.VOC_CUSTOM\[0\]\): "
                                                r"VOC folder '.*VOC2007' has no 'ImageSets/Main/val2.txt'"):
        load_nst_cfg(_yaml(data, voc=[["t_nosplit", "VOC2007", "val2", 2007, "person"]]))
    with pytest.raises(FileNotFoundError, match=r"data set 't_nodir': DIRNAME folder 'VOC2099' "
                                                r"\(DATASETS.VOC_CUSTOM\[0\]\) does not exist; tried: "):
        load_nst_cfg(_yaml(data, voc=[["t_nodir", "VOC2099", "test", 2007, "person"]]))


def test_same_definition_twice_is_fine_another_one_is_an_error_naming_it(data, forget):
    """Idempotent (a config loaded twice, or by every process); a NAME taken by another
    definition (another entry's, or a built-in set's) is a ValueError naming it."""
    forget += ["t_twice", "t_twice_voc"]
    val = [str(data / "coco/annotations/instances_val2017.json"), str(data / "coco/val2017")]
    voc = [str(data / "VOC2007"), "test", 2007, "person,car,bird"]
    cfg = get_nst_cfg()
    cfg.DATASETS.COCO_CUSTOM = [["t_twice", *val], ["t_twice", *val]]  # twice in one config too
    cfg.DATASETS.VOC_CUSTOM = [["t_twice_voc", *voc]]
    assert register_custom_datasets(cfg) == ["t_twice", "t_twice", "t_twice_voc"]
    loader = DatasetCatalog["t_twice"]
    assert register_custom_datasets(cfg) == ["t_twice", "t_twice", "t_twice_voc"]
    assert DatasetCatalog["t_twice"] is loader  # not registered anew
    assert len(DatasetCatalog.get("t_twice")) == 2

    other = get_nst_cfg()
    other.DATASETS.COCO_CUSTOM = [["t_twice", str(data / "coco/annotations/instances_train2017.json"),
                                   val[1]]]
    with pytest.raises(ValueError, match=r"DATASETS.COCO_CUSTOM\[0\]: data set 't_twice' is already "
                                         r"registered with a different definition \(json_file=.*"
                                         r"instances_val2017.json"):
        register_custom_datasets(other)
    other.DATASETS.COCO_CUSTOM = []
    other.DATASETS.VOC_CUSTOM = [["t_twice_voc", *voc[:3], "person,bird,car"]]
    with pytest.raises(ValueError, match=r"data set 't_twice_voc' is already registered .*thing_classes"):
        register_custom_datasets(other)
    other.DATASETS.VOC_CUSTOM = [["t_twice", *voc]]  # a COCO set's name for a VOC set
    with pytest.raises(ValueError, match=r"DATASETS.VOC_CUSTOM\[0\]: data set 't_twice' is already"):
        register_custom_datasets(other)
    other.DATASETS.VOC_CUSTOM = [["voc_2007_test", *voc]]  # Detectron2's built-in name
    with pytest.raises(ValueError, match=r"data set 'voc_2007_test' is already registered"):
        register_custom_datasets(other)
