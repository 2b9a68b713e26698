"""The classification demo on the bundled digits: teacher once, then students over several seeds.

``run_demo`` trains the teacher of ``configs/demo/cls_teacher.yaml`` (or reuses the one trained
with the same config), then each student method of ``configs/demo/cls_student*.yaml`` for every
seed, and returns the final validation top-1 of every run, the per-epoch curves and the logged
losses. ``format_table`` prints mean ± std per method with each seed's value and the differences
that say whether a term helps; ``plot_curves`` saves the accuracy curves and ``plot_seeds`` the
per-seed results beside the loss curves (task loss against loss_nst).
"""
import json
import logging
import os
import time
from collections import OrderedDict

import numpy as np

from nst_det.classification.config import load_cls_config
from nst_det.classification.data import DigitsDataset
from nst_det.classification.trainer import ClsTrainer
from nst_det.engine.atomic import atomic_save_figure, atomic_write_json
from nst_det.engine.config_paths import REPO_ROOT
from nst_det.research.seed_report import (format_difference, format_mean_std, loss_curve,
                                        mean_std, plot_seed_runs, weight_variants)

__all__ = ["DEMO_METHODS", "DEFAULT_METHODS", "method_variants", "teacher_overrides", "run_demo",
           "format_table", "plot_curves", "plot_seeds", "val_curve"]

logger = logging.getLogger(__name__)

DEMO_CONFIGS = os.path.join(REPO_ROOT, "configs", "demo")
# method name -> config file in configs/demo
DEMO_METHODS = {
    "student alone": "cls_student.yaml",
    "NST (poly)": "cls_student_nst.yaml",
    "KD": "cls_student_kd.yaml",
    "NST (poly) + KD": "cls_student_nst_kd.yaml",
    "NST (gaussian)": "cls_student_nst_gaussian.yaml",
    "NST (linear)": "cls_student_nst_linear.yaml",
    "AT": "cls_student_at.yaml",
}
# What the demo runs unless told otherwise: the two comparisons that say whether NST helps
# (NST against the student alone, NST + KD against KD).
DEFAULT_METHODS = ("student alone", "NST (poly)", "KD", "NST (poly) + KD")


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


def _config(config_file, opts):
    return load_cls_config(config_file, [str(o) if not isinstance(o, tuple) else o for o in opts])


def _train(cfg, datasets):
    start = time.perf_counter()
    trainer = ClsTrainer(cfg, *datasets)
    trainer.train()
    return val_curve(cfg.OUTPUT_DIR), time.perf_counter() - start


# The teacher's config, saved beside its weights: a later demo reuses the teacher only when its
# config is the same.
TEACHER_CONFIG_FILE = "demo_config.yaml"


def _reusable_teacher(cfg) -> bool:
    folder = cfg.OUTPUT_DIR
    saved = os.path.join(folder, TEACHER_CONFIG_FILE)
    if not (os.path.isfile(os.path.join(folder, "model_final.pth")) and os.path.isfile(saved)):
        return False
    with open(saved, encoding="utf-8") as f:
        return f.read() == cfg.dump()


def method_variants(methods, nst_weights=()) -> "OrderedDict[str, tuple]":
    """{run name: (config file in configs/demo, overrides, output folder prefix)} of ``methods``
    (names of :data:`DEMO_METHODS`); with ``nst_weights``, each method with an NST term is run
    once per weight ("NST (poly), weight 10")."""
    variants = OrderedDict()
    for method in methods:
        if method not in DEMO_METHODS:
            raise KeyError(f"unknown demo method '{method}'; known: {', '.join(DEMO_METHODS)}")
        config = DEMO_METHODS[method]
        slug = os.path.splitext(config)[0]
        if "NST" not in method or not nst_weights:
            variants[method] = (config, [], slug)
            continue
        for name, opts, folder in weight_variants(method, slug, nst_weights):
            variants[name] = (config, opts, folder)
    return variants


# Keys of the overrides that reach the teacher too: it must see the same images on the same device.
TEACHER_OVERRIDE_PREFIXES = ("DATA.", "MODEL.DEVICE")


def teacher_overrides(opts):
    """The KEY VALUE pairs of ``opts`` that the teacher takes as well
    (:data:`TEACHER_OVERRIDE_PREFIXES`); the rest (the student's network, its taps, the
    distillation terms, ...) are the students' alone."""
    pairs = list(zip(opts[::2], opts[1::2]))
    return [x for key, value in pairs if str(key).startswith(TEACHER_OVERRIDE_PREFIXES)
            for x in (key, value)]


def run_demo(output_dir, methods=DEFAULT_METHODS,
             seeds=(0, 1, 2), epochs=None, teacher_epochs=None, config_dir=DEMO_CONFIGS, opts=(),
             nst_weights=()):
    """Train the teacher (unless ``output_dir/teacher`` holds one trained with the same config),
    then every student run of :func:`method_variants` for every seed; ``opts`` (KEY VALUE ...)
    override the students' configs, and those of :func:`teacher_overrides` the teacher's too.
    Returns a dict: ``teacher`` {top1, curve}, ``runs`` {method: [{seed, top1, curve, seconds,
    output_dir}]}, ``teacher_weights``."""
    opts = list(opts)
    if len(opts) % 2:
        raise ValueError(f"config overrides must be KEY VALUE pairs, got {len(opts)} items: {opts}")
    teacher_dir = os.path.join(output_dir, "teacher")
    teacher_weights = os.path.join(teacher_dir, "model_final.pth")
    teacher_cfg = _config(os.path.join(config_dir, "cls_teacher.yaml"),
                          _overrides(teacher_dir, 0, teacher_epochs, teacher_overrides(opts)
                                     + ["DISTILL.TEACHER.WEIGHTS", ""]))  # trained alone
    size = teacher_cfg.DATA.IMAGE_SIZE
    datasets = (DigitsDataset(train=True, size=size), DigitsDataset(train=False, size=size))
    if _reusable_teacher(teacher_cfg):
        logger.info(f"Reusing the trained teacher {teacher_weights}")
        teacher_curve = val_curve(teacher_dir)
    else:
        logger.info("Training the teacher")
        teacher_curve, _ = _train(teacher_cfg, datasets)
        with open(os.path.join(teacher_dir, TEACHER_CONFIG_FILE), "w", encoding="utf-8") as f:
            f.write(teacher_cfg.dump())
    results = {"teacher": {"top1": teacher_curve[-1], "curve": teacher_curve},
               "teacher_weights": teacher_weights, "runs": {}}
    for method, (config, extra, slug) in method_variants(methods, nst_weights).items():
        runs = results["runs"][method] = []
        for seed in seeds:
            logger.info(f"Training {method}, seed {seed}")
            run_dir = os.path.join(output_dir, f"{slug}_seed{seed}")
            cfg = _config(os.path.join(config_dir, config), _overrides(
                run_dir, seed, epochs, opts + extra + ["DISTILL.TEACHER.WEIGHTS", teacher_weights]))
            if cfg.DATA.IMAGE_SIZE != size:
                raise ValueError(f"{config}: DATA.IMAGE_SIZE {cfg.DATA.IMAGE_SIZE} "
                                 f"differs from the teacher's {size}")
            curve, seconds = _train(cfg, datasets)
            runs.append({"seed": seed, "top1": curve[-1], "curve": curve, "seconds": seconds,
                         "output_dir": run_dir})
    atomic_write_json(results, os.path.join(output_dir, "demo_results.json"), indent=1)
    return results


def _top1(runs):
    return [r["top1"] for r in runs]


def format_table(results) -> str:
    """Markdown table: val top-1 of the teacher, then of each student method as mean ± std over
    the seeds with each seed's value; below it the differences of the means that say whether a
    term helps (each method against the student alone, "X + KD" against KD)."""
    lines = ["| model | val top-1 (%): mean ± std (each seed) | seeds |", "| --- | --- | --- |",
             f"| teacher | {results['teacher']['top1']:.2f} | 0 |"]
    for method, runs in results["runs"].items():
        seeds = ", ".join(str(r["seed"]) for r in runs)
        lines.append(f"| student: {method} | {format_mean_std(_top1(runs), 2)} | {seeds} |")
    runs = results["runs"]
    compared = [(m, "student alone") for m in runs if m != "student alone"]
    compared += [(m, "KD") for m in runs if " + KD" in m]
    compared = [(m, base) for m, base in compared if base in runs]
    if compared:
        lines += ["", "Differences of the means"
                  + (" ± their standard error over the seeds:"
                     if len(next(iter(runs.values()))) > 1 else ":")]
    for method, base in compared:
        lines.append(f"- {method} against {base}: "
                     f"{format_difference(_top1(runs[method]), _top1(runs[base]))} points")
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
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def plot_seeds(results, path: str) -> str:
    """seeds.png: every seed's final val top-1 per method (the teacher as a line) and, per method,
    the task loss (loss_cls) against loss_nst over the iterations (metrics.json of each run)."""
    metrics = {"val top-1 (%)": OrderedDict((m, _top1(runs))
                                            for m, runs in results["runs"].items())}
    references = {"val top-1 (%)": {"teacher": results["teacher"]["top1"]}}
    curves = OrderedDict()
    for method, runs in results["runs"].items():
        folders = [r["output_dir"] for r in runs]
        curves[method] = OrderedDict([("loss_cls", [loss_curve(d, ["loss_cls"]) for d in folders])])
        nst = [loss_curve(d, ["loss_nst"]) for d in folders]
        if all(iterations for iterations, _ in nst):
            curves[method]["loss_nst"] = nst
    seeds = len(next(iter(results["runs"].values())))
    return plot_seed_runs(path, f"Digits demo: {seeds} seed(s) per method", metrics, references,
                          curves)
