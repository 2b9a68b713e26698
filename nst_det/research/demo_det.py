"""The detection demo on the generated shapes set: train the tiny teacher once, then, for every
seed, the student alone and each NST-distilled variant (configs/demo/det_*.yaml); evaluate each
run with the VOC and the COCO evaluator and report mean ± std over the seeds with every seed's
value, the loss magnitudes, and a picture of both.

Every run is seeded by its config's SEED (the seed replaces it), weights, data order and
sampling alike, so a rerun on the same machine and thread count prints the same numbers.
"""
import json
import logging
import os
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

from detectron2.utils.env import seed_all_rng

from nst_det.detection.data import demo_data_exists, demo_root, register_demo_datasets
from nst_det.detection.load_config import load_nst_cfg
from nst_det.detection.trainer import DistillTrainer
from nst_det.engine.atomic import atomic_write_json
from nst_det.engine.config_paths import REPO_ROOT
from nst_det.engine.precision import PRECISIONS
from nst_det.research.demo_data import generate_demo_data
from nst_det.research.seed_report import (format_difference, format_mean_std, logged_rows,
                                          loss_curve, mean_std, plot_seed_runs, weight_variants)

__all__ = ["DEMO_CONFIGS", "TEACHER_CONFIG", "demo_variants", "run_demo", "format_table",
           "loss_magnitudes", "plot_demo"]

logger = logging.getLogger(__name__)

DEMO_CONFIGS = os.path.join(REPO_ROOT, "configs", "demo")
TEACHER_CONFIG = "det_teacher.yaml"
STUDENT_CONFIG = "det_student.yaml"
NST_CONFIG = "det_student_nst.yaml"
_VOC_TEST, _COCO_TEST = "nst_demo_voc_test", "nst_demo_coco_test"
# The detector's own losses (Faster R-CNN): their sum is the task loss.
TASK_LOSSES = ("loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc")
# (label in tables, key in the evaluator's results, evaluator)
METRICS = (("VOC AP50 (07 11-point)", "AP50_11point", "voc"),
           ("VOC AP50 (area)", "AP50_area", "voc"),
           ("COCO AP", "AP", "coco"), ("COCO AP50", "AP50", "coco"))


def demo_variants(nst_weights: Sequence[float] = (),
                  teacher_precisions: Sequence[str] = ()) -> "OrderedDict[str, tuple]":
    """{variant name: (config file in configs/demo, overrides, output folder name)}: the student
    alone, then the NST student at the config's weight, or at each of ``nst_weights``; with
    ``teacher_precisions``, each NST student with its teacher in each of them
    (DISTILL.TEACHER.PRECISION; "fp32" keeps the plain names)."""
    for precision in teacher_precisions:
        if precision not in PRECISIONS:
            raise ValueError(f"--teacher-precisions: {precision!r} is none of {list(PRECISIONS)}")
    nst = [("student + NST", [], "student_nst")] if not nst_weights else \
        weight_variants("student + NST", "student_nst", nst_weights)
    variants = OrderedDict([("student", (STUDENT_CONFIG, [], "student"))])
    for name, opts, folder in nst:
        for precision in teacher_precisions or ["fp32"]:
            if precision == "fp32":
                variants[name] = (NST_CONFIG, opts, folder)
            else:
                variants[f"{name}, {precision} teacher"] = (
                    NST_CONFIG, opts + ["DISTILL.TEACHER.PRECISION", precision],
                    f"{folder}_{precision}_teacher")
    return variants


def _run_cfg(config: str, output_dir: str, student_iters: Optional[int], opts=()):
    """The config of one run; ``student_iters`` scales every schedule like the students' (the
    teacher keeps its ratio to them)."""
    config_file = os.path.join(DEMO_CONFIGS, config)
    opts = ["OUTPUT_DIR", output_dir] + list(opts)
    if student_iters:
        cfg = load_nst_cfg(config_file, opts)
        student = load_nst_cfg(os.path.join(DEMO_CONFIGS, STUDENT_CONFIG))
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
    rows = [row for row in logged_rows(output_dir) if "total_loss" in row]
    if not rows:
        raise ValueError(f"'{output_dir}/metrics.json' has no logged losses")
    out = {}
    for when, row in (("first", rows[0]), ("last", rows[-1])):
        entry = {"iteration": row["iteration"], "task_loss": sum(row[k] for k in TASK_LOSSES)}
        entry.update({k: v for k, v in row.items() if k == "loss_nst" or k.startswith("nst/")})
        out[when] = entry
    return out


def _train_and_evaluate(cfg, run_dir: str, opts=()) -> dict:
    """Train one run from its config's SEED, evaluate it on both test sets, keep the result (the
    variant's overrides ``opts`` and the whole config with it) in ``run_dir/eval.json``; returns
    that result."""
    start = time.perf_counter()
    seed_all_rng(cfg.SEED)  # the config's seed for weights, data order and sampling, as train_net
    trainer = DistillTrainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    result = {"seed": cfg.SEED, "iterations": cfg.SOLVER.MAX_ITER,
              "voc": results[_VOC_TEST]["bbox"], "coco": results[_COCO_TEST]["bbox"],
              "seconds": time.perf_counter() - start, "output_dir": run_dir, "opts": list(opts)}
    atomic_write_json(dict(result, config=cfg.dump()), os.path.join(run_dir, "eval.json"), indent=1)
    return result


def _reusable_teacher(cfg) -> Optional[dict]:
    """The teacher's earlier result when its OUTPUT_DIR holds a finished run of the same config."""
    path = os.path.join(cfg.OUTPUT_DIR, "eval.json")
    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if not (os.path.isfile(path) and os.path.isfile(weights)):
        return None
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    return result if result.pop("config", None) == cfg.dump() else None


def run_demo(output_dir: str = "output/demo_det", student_iters: Optional[int] = None,
             datasets_root: Optional[str] = None, seeds: Sequence[int] = (0,),
             nst_weights: Sequence[float] = (), teacher_precisions: Sequence[str] = ()) -> dict:
    """Generate the data if missing; train the teacher (or reuse the one finished in
    ``output_dir/teacher`` with the same config), then every variant of
    :func:`demo_variants` for every seed; write results.json and seeds.png in
    ``output_dir`` (``teacher_precisions``: see :func:`demo_variants`). Returns {"teacher": result, "variants": {name: [result of each seed]},
    "losses": {name: [loss magnitudes of each seed]}}."""
    if not seeds:
        raise ValueError("run_demo needs at least one seed")
    variants = demo_variants(nst_weights, teacher_precisions)
    root = demo_root(datasets_root)
    if not demo_data_exists(root):
        logger.info(f"Generating the demo detection set in {root} ...")
        generate_demo_data(root)
    register_demo_datasets(datasets_root)
    teacher_dir = os.path.join(output_dir, "teacher")
    teacher_cfg = _run_cfg(TEACHER_CONFIG, teacher_dir, student_iters)
    teacher = _reusable_teacher(teacher_cfg)
    if teacher:
        logger.info(f"Reusing the trained teacher in {teacher_dir}")
    else:
        logger.info(f"Demo teacher: {TEACHER_CONFIG}, {teacher_cfg.SOLVER.MAX_ITER} iterations")
        teacher = _train_and_evaluate(teacher_cfg, teacher_dir)
    teacher_weights = os.path.join(teacher_dir, "model_final.pth")
    summary = {"teacher": teacher, "variants": OrderedDict((v, []) for v in variants),
               "losses": OrderedDict((v, []) for v in variants)}
    for seed in seeds:
        for variant, (config, opts, folder) in variants.items():
            run_dir = os.path.join(output_dir, folder, f"seed{seed}")
            opts = list(opts) + ["SEED", int(seed)]
            if config == NST_CONFIG:
                opts += ["DISTILL.TEACHER.WEIGHTS", teacher_weights]
            cfg = _run_cfg(config, run_dir, student_iters, opts)
            logger.info(f"Demo run '{variant}', seed {seed}: {config}, {cfg.SOLVER.MAX_ITER} "
                        f"iterations -> {run_dir}")
            summary["variants"][variant].append(
                _train_and_evaluate(cfg, run_dir, variants[variant][1]))
            summary["losses"][variant].append(loss_magnitudes(run_dir))
    atomic_write_json(summary, os.path.join(output_dir, "results.json"), indent=1)
    plot_demo(summary, os.path.join(output_dir, "seeds.png"))
    return summary


def _metric(results: List[dict], key: str, evaluator: str) -> List[float]:
    return [r[evaluator][key] for r in results]


def format_table(summary: dict) -> str:
    """The demo's results as Markdown: one row per model with mean ± std over the seeds and each
    seed's value; the share of the teacher-student gap each distilled variant closes; the task-loss
    and loss_nst magnitudes of the distilled runs."""
    teacher, variants = summary["teacher"], summary["variants"]
    seeds = ", ".join(str(r["seed"]) for r in next(iter(variants.values())))
    lines = [
        "| model | iterations | seeds | " + " | ".join(m[0] for m in METRICS)
        + " | train + eval s |",
        "| --- | --- | --- | " + " | ".join("---" for _ in METRICS) + " | --- |",
        f"| teacher | {teacher['iterations']} | {teacher['seed']} | "
        + " | ".join(f"{teacher[ev][key]:.1f}" for _, key, ev in METRICS)
        + f" | {teacher['seconds']:.0f} |",
    ]
    for variant, results in variants.items():
        seconds = mean_std([r["seconds"] for r in results])[0]
        lines.append(f"| {variant} | {results[0]['iterations']} | {seeds} | "
                     + " | ".join(format_mean_std(_metric(results, key, ev))
                                  for _, key, ev in METRICS)
                     + f" | {seconds:.0f} |")
    alone = variants.get("student")
    if alone and len(variants) > 1:
        lines += ["", "Against the student alone"
                  + (" (difference of the means ± its standard error over the seeds):"
                     if len(alone) > 1 else ":")]
        for variant, results in variants.items():
            if variant == "student":
                continue
            closed = []
            for label, key, ev in (METRICS[0], METRICS[2]):
                base = mean_std(_metric(alone, key, ev))[0]
                gap = teacher[ev][key] - base
                gain = mean_std(_metric(results, key, ev))[0] - base
                difference = format_difference(_metric(results, key, ev),
                                               _metric(alone, key, ev), 1)
                text = f"{label} {difference}"
                closed.append(f"{text} ({100 * gain / gap:.0f}% of the gap to the teacher)"
                              if gap > 0 else text)
            lines.append(f"- {variant}: " + "; ".join(closed))
    distilled = [(v, runs) for v, runs in summary["losses"].items()
                 if "loss_nst" in runs[0]["last"]]
    if distilled:
        lines += ["", "Loss magnitudes at the first and the last logged iteration (mean over "
                      "seeds; Detectron2's median over its window):"]
    for variant, runs in distilled:
        for when in ("first", "last"):
            task = mean_std([r[when]["task_loss"] for r in runs])[0]
            nst = mean_std([r[when]["loss_nst"] for r in runs])[0]
            levels = ", ".join(
                f"{k[4:]} {mean_std([r[when][k] for r in runs])[0]:.3g}"
                for k in runs[0][when] if k.startswith("nst/"))
            lines.append(f"- {variant}, iteration {runs[0][when]['iteration']}: task loss "
                         f"{task:.3f}, loss_nst {nst:.3f} (unweighted MMD^2 per level: {levels})")
    return "\n".join(lines)


def plot_demo(summary: dict, path: str) -> str:
    """seeds.png: VOC AP50 and COCO AP of every seed per model, the teacher as a line, and the task
    loss against loss_nst over the iterations of the distilled runs."""
    metrics, references = OrderedDict(), OrderedDict()
    for label, key, ev in (METRICS[0], METRICS[2]):
        metrics[label] = OrderedDict((v, _metric(r, key, ev))
                                     for v, r in summary["variants"].items())
        references[label] = {"teacher": summary["teacher"][ev][key]}
    curves = OrderedDict()
    for variant, results in summary["variants"].items():
        runs = [r["output_dir"] for r in results]
        curves[variant] = OrderedDict([("task loss", [loss_curve(d, TASK_LOSSES) for d in runs])])
        if "loss_nst" in summary["losses"][variant][0]["last"]:
            curves[variant]["loss_nst"] = [loss_curve(d, ["loss_nst"]) for d in runs]
    seeds = len(next(iter(summary["variants"].values())))
    return plot_seed_runs(path, f"Detection demo: {seeds} seed(s) per model", metrics, references,
                          curves)
