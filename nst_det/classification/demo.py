"""The classification demo on the bundled digits: teacher once, then students over several seeds.

``run_demo`` trains the teacher of ``configs/demo/cls_teacher.yaml`` (or reuses its checkpoint),
then each student method of ``configs/demo/cls_student*.yaml`` for every seed, and returns the
final validation top-1 of every run and the per-epoch curves. ``format_table`` prints mean +- std
per method; ``plot_curves`` saves the curves as a PNG.
"""
import json
import logging
import os
import time

import numpy as np

from nst_det.classification.config import load_cls_config
from nst_det.classification.data import DigitsDataset
from nst_det.classification.engine import ClsTrainer
from nst_det.engine.config_paths import REPO_ROOT

__all__ = ["DEMO_METHODS", "run_demo", "format_table", "plot_curves", "val_curve"]

logger = logging.getLogger(__name__)

DEMO_CONFIGS = os.path.join(REPO_ROOT, "configs", "demo")
# method name -> config file in configs/demo
DEMO_METHODS = {
    "student alone": "cls_student.yaml",
    "NST (poly)": "cls_student_nst.yaml",
    "NST (poly) + KD": "cls_student_nst_kd.yaml",
    "KD": "cls_student_kd.yaml",
    "AT": "cls_student_at.yaml",
}


def val_curve(output_dir: str):
    """Validation top-1 (%) after each epoch, read from ``output_dir/metrics.json``."""
    curve = {}
    with open(os.path.join(output_dir, "metrics.json"), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if "val/top1" in row:
                curve[int(row["epoch"])] = row["val/top1"]
    return [curve[e] for e in sorted(curve)]


def _overrides(output_dir, seed, epochs, extra=()):
    opts = ["OUTPUT_DIR", output_dir, "SEED", seed]
    if epochs:
        opts += ["SOLVER.EPOCHS", epochs, "SOLVER.STEPS", (max(1, int(0.75 * epochs)),)]
    return opts + list(extra)


def _train(config_file, opts, datasets):
    cfg = load_cls_config(config_file, [str(o) if not isinstance(o, tuple) else o for o in opts])
    start = time.perf_counter()
    trainer = ClsTrainer(cfg, *datasets)
    trainer.train()
    return val_curve(cfg.OUTPUT_DIR), time.perf_counter() - start


def run_demo(output_dir, methods=("student alone", "NST (poly)", "NST (poly) + KD"),
             seeds=(0, 1, 2), epochs=None, teacher_epochs=None, config_dir=DEMO_CONFIGS):
    """Train the teacher (unless ``output_dir/teacher/model_final.pth`` exists), then every
    student ``method`` for every seed. Returns a dict: ``teacher`` {top1, curve}, ``runs``
    {method: [{seed, top1, curve, seconds}]}, ``teacher_weights``."""
    datasets = (DigitsDataset(train=True, size=_image_size(config_dir)),
                DigitsDataset(train=False, size=_image_size(config_dir)))
    teacher_dir = os.path.join(output_dir, "teacher")
    teacher_weights = os.path.join(teacher_dir, "model_final.pth")
    if os.path.isfile(teacher_weights):
        logger.info(f"Reusing the trained teacher {teacher_weights}")
        teacher_curve = val_curve(teacher_dir)
    else:
        logger.info("Training the teacher")
        teacher_curve, _ = _train(os.path.join(config_dir, "cls_teacher.yaml"),
                                  _overrides(teacher_dir, 0, teacher_epochs), datasets)
    results = {"teacher": {"top1": teacher_curve[-1], "curve": teacher_curve},
               "teacher_weights": teacher_weights, "runs": {}}
    for method in methods:
        if method not in DEMO_METHODS:
            raise KeyError(f"unknown demo method '{method}'; known: {', '.join(DEMO_METHODS)}")
        runs = results["runs"][method] = []
        slug = os.path.splitext(DEMO_METHODS[method])[0]
        for seed in seeds:
            logger.info(f"Training {method}, seed {seed}")
            run_dir = os.path.join(output_dir, f"{slug}_seed{seed}")
            curve, seconds = _train(
                os.path.join(config_dir, DEMO_METHODS[method]),
                _overrides(run_dir, seed, epochs, ["DISTILL.TEACHER.WEIGHTS", teacher_weights]),
                datasets)
            runs.append({"seed": seed, "top1": curve[-1], "curve": curve, "seconds": seconds,
                         "output_dir": run_dir})
    with open(os.path.join(output_dir, "demo_results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    return results


def _image_size(config_dir):
    return load_cls_config(os.path.join(config_dir, "cls_student.yaml")).DATA.IMAGE_SIZE


def format_table(results) -> str:
    """Markdown table: method, val top-1 mean +- std over seeds, each seed's value; teacher first."""
    lines = ["| model | val top-1 (%) mean ± std | runs |", "| --- | --- | --- |",
             f"| teacher (demo_teacher) | {results['teacher']['top1']:.2f} | 1 |"]
    for method, runs in results["runs"].items():
        top1 = np.array([r["top1"] for r in runs])
        values = ", ".join(f"{v:.1f}" for v in top1)
        std = top1.std(ddof=1) if len(top1) > 1 else 0.0
        lines.append(f"| student: {method} | {top1.mean():.2f} ± {std:.2f} "
                     f"| {len(top1)} seeds: {values} |")
    return "\n".join(lines)


def plot_curves(results, path: str) -> str:
    """Validation top-1 per epoch, mean +- std band per method, teacher as a dashed line -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, runs in results["runs"].items():
        curves = np.array([r["curve"] for r in runs])
        epochs = np.arange(1, curves.shape[1] + 1)
        mean, std = curves.mean(axis=0), curves.std(axis=0)
        ax.plot(epochs, mean, marker="o", ms=3, label=f"{method} ({len(runs)} seeds)")
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
    ax.axhline(results["teacher"]["top1"], color="k", ls="--", lw=1, label="teacher")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title("Digits demo: student accuracy by distillation method")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
