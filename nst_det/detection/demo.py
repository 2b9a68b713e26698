"""The detection demo on the generated shapes set: train the tiny teacher, the student alone and
the student distilled with NST (configs/demo/det_*.yaml), evaluate each with the VOC and the COCO
evaluator, and tabulate the results with the measured loss magnitudes."""
import json
import logging
import os
import time
from collections import OrderedDict
from typing import Dict, Optional

from detectron2.utils.env import seed_all_rng

from nst_det.detection.load_config import load_nst_cfg
from nst_det.detection.data import demo_data_exists, demo_root, generate_demo_data, register_demo_datasets
from nst_det.engine.config_paths import REPO_ROOT

from .trainer import DistillTrainer

__all__ = ["DEMO_STAGES", "run_demo", "format_table", "loss_magnitudes"]

logger = logging.getLogger(__name__)

DEMO_CONFIGS = os.path.join(REPO_ROOT, "configs", "demo")
# stage -> config file in configs/demo; trained in this order (the NST student needs the teacher)
DEMO_STAGES = OrderedDict([
    ("teacher", "det_teacher.yaml"),
    ("student", "det_student.yaml"),
    ("student + NST", "det_student_nst.yaml"),
])
_VOC_TEST, _COCO_TEST = "nst_demo_voc_test", "nst_demo_coco_test"


def _stage_cfg(config: str, output_dir: str, student_iters: Optional[int], opts=()):
    config_file = os.path.join(DEMO_CONFIGS, config)
    opts = ["OUTPUT_DIR", output_dir] + list(opts)
    if student_iters:  # scale every schedule like the students' (the teacher keeps its ratio)
        cfg = load_nst_cfg(config_file, opts)
        student = load_nst_cfg(os.path.join(DEMO_CONFIGS, DEMO_STAGES["student"]))
        factor = student_iters / student.SOLVER.MAX_ITER
        max_iter = max(1, round(cfg.SOLVER.MAX_ITER * factor))
        steps = (max(1, round(s * factor)) for s in cfg.SOLVER.STEPS)
        opts += ["SOLVER.MAX_ITER", max_iter,
                 "SOLVER.STEPS", tuple(sorted({s for s in steps if s < max_iter})),
                 "SOLVER.WARMUP_ITERS", round(cfg.SOLVER.WARMUP_ITERS * factor)]
    return load_nst_cfg(config_file, opts)


def loss_magnitudes(output_dir: str) -> Dict[str, Dict[str, float]]:
    """Task loss (sum of the detector's losses), loss_nst and each level's MMD^2 at the first and
    the last logged iteration of a run (``metrics.json``; medians over Detectron2's window)."""
    rows = []
    with open(os.path.join(output_dir, "metrics.json"), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if "total_loss" in row:
                rows.append(row)
    out = {}
    for when, row in (("first", rows[0]), ("last", rows[-1])):
        task = sum(v for k, v in row.items() if k.startswith("loss_") and k not in ("loss_nst", "loss_kd"))
        entry = {"iteration": row["iteration"], "task_loss": task}
        entry.update({k: v for k, v in row.items() if k == "loss_nst" or k.startswith("nst/")})
        out[when] = entry
    return out


def run_demo(output_dir: str = "output/demo_det", student_iters: Optional[int] = None,
             datasets_root: Optional[str] = None) -> dict:
    """Generate the data if missing, train and evaluate the three stages; returns
    {"stages": {stage: {"voc": metrics, "coco": metrics, "seconds": s}}, "losses": ...}."""
    root = demo_root(datasets_root)
    if not demo_data_exists(root):
        logger.info(f"Generating the demo detection set in {root} ...")
        generate_demo_data(root)
    register_demo_datasets(datasets_root)
    teacher_weights = os.path.join(output_dir, "teacher", "model_final.pth")
    stages = OrderedDict()
    for stage, config in DEMO_STAGES.items():
        stage_dir = os.path.join(output_dir, config[len("det_"):-len(".yaml")])
        opts = ["DISTILL.TEACHER.WEIGHTS", teacher_weights] if "NST" in stage else []
        cfg = _stage_cfg(config, stage_dir, student_iters, opts)
        logger.info(f"Demo stage '{stage}': {config}, {cfg.SOLVER.MAX_ITER} iterations -> {stage_dir}")
        start = time.perf_counter()
        seed_all_rng(cfg.SEED)  # the config's seed for weights and data order, as train_net
        trainer = DistillTrainer(cfg)
        trainer.resume_or_load(resume=False)
        results = trainer.train()
        stages[stage] = {"voc": results[_VOC_TEST]["bbox"], "coco": results[_COCO_TEST]["bbox"],
                         "seconds": time.perf_counter() - start, "iterations": cfg.SOLVER.MAX_ITER,
                         "output_dir": stage_dir}
    summary = {
        "stages": stages,
        "losses": {stage: loss_magnitudes(stages[stage]["output_dir"]) for stage in stages
                   if stage != "teacher"},
    }
    with open(os.path.join(output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return summary


def format_table(summary: dict) -> str:
    """The demo's results as a Markdown table, and the measured loss magnitudes."""
    lines = [
        "| model | iterations | VOC AP50 (07 11-point) | VOC AP50 (area) | COCO AP | COCO AP50 | train + eval s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for stage, r in summary["stages"].items():
        lines.append(
            f"| {stage} | {r['iterations']} | {r['voc']['AP50_11point']:.1f} | "
            f"{r['voc']['AP50_area']:.1f} | {r['coco']['AP']:.1f} | {r['coco']['AP50']:.1f} | "
            f"{r['seconds']:.0f} |")
    nst = summary["losses"].get("student + NST")
    if nst:
        for when in ("first", "last"):
            m = nst[when]
            levels = ", ".join(f"{k[4:]} {v:.3g}" for k, v in m.items() if k.startswith("nst/"))
            lines.append(f"\nstudent + NST, iteration {m['iteration']}: task loss {m['task_loss']:.3f}, "
                         f"loss_nst {m['loss_nst']:.3f} (unweighted MMD^2 per level: {levels})")
    return "\n".join(lines)
