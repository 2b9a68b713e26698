"""Test of nst_det/detection/demo.py (tools/demo_det.py): the three demo stages run end to end on a
tiny generated set with a few iterations, and the table reports both evaluators and the losses."""
import json
import os

import nst_det.detection  # noqa: F401  (first: makes Detectron2 usable here, registers nst_det's models)
from nst_det.detection.load_config import load_nst_cfg
from nst_det.detection.data import generate_demo_data, register_demo_datasets
from nst_det.detection.demo import DEMO_CONFIGS, DEMO_STAGES, format_table, run_demo


def _max_iter(config):
    return load_nst_cfg(os.path.join(DEMO_CONFIGS, config)).SOLVER.MAX_ITER


def test_demo_trains_teacher_student_and_nst_student(tmp_path):
    datasets = tmp_path / "datasets"
    generate_demo_data(str(datasets / "demo_det"), num_train=4, num_val=0, num_test=2, seed=4,
                       height=64, width=80)
    try:
        summary = run_demo(str(tmp_path / "out"), student_iters=2, datasets_root=str(datasets))
    finally:
        register_demo_datasets()
    stages = summary["stages"]
    assert list(stages) == list(DEMO_STAGES)
    assert stages["student"]["iterations"] == stages["student + NST"]["iterations"] == 2
    ratio = _max_iter("det_teacher.yaml") / _max_iter("det_student.yaml")
    assert stages["teacher"]["iterations"] == round(2 * ratio)  # scaled like the students
    for result in stages.values():
        assert {"AP50_11point", "AP50_area", "AP50-circle"} <= set(result["voc"])
        assert {"AP", "AP50", "AR100"} <= set(result["coco"])
    nst = summary["losses"]["student + NST"]["last"]
    assert nst["loss_nst"] > 0 and nst["task_loss"] > 0 and "nst/p2" in nst
    assert "loss_nst" not in summary["losses"]["student"]["last"]
    table = format_table(summary)
    assert all(f"| {stage} |" in table for stage in DEMO_STAGES) and "loss_nst" in table
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["stages"]["student + NST"]["iterations"] == 2
    assert os.path.isfile(tmp_path / "out" / "teacher" / "model_final.pth")
