"""Runs repeated over seeds, reported as both demos report them: mean ± sample standard deviation
with every seed's value, the losses each run logged to its ``metrics.json``, and one picture of
both (the final metric of every seed beside the task loss and ``loss_nst`` over the iterations).
"""
import json
import math
import os
import shlex
import statistics
import sys
from typing import Dict, List, Sequence, Tuple

from nst_det.engine.atomic import atomic_save_figure, atomic_write_text
from nst_det.engine.config_paths import REPO_ROOT
from nst_det.research.measure import load_average, machine_description

__all__ = ["weight_variants", "mean_std", "format_mean_std", "format_difference", "logged_rows",
           "loss_curve", "plot_seed_runs", "invoked_command", "write_report"]


def weight_variants(name: str, folder: str, weights: Sequence[float],
                    key: str = "DISTILL.NST.WEIGHT") -> List[Tuple[str, list, str]]:
    """One run of ``name`` per weight: [(run name "<name>, weight 4", overrides [key, 4.0], output
    folder "<folder>_w4")]; a weight that is not > 0 is a ValueError naming --nst-weights."""
    variants = []
    for weight in weights:
        if not weight > 0:
            raise ValueError(f"--nst-weights: every weight must be > 0, got {weight}")
        variants.append((f"{name}, weight {weight:g}", [key, float(weight)],
                         f"{folder}_w{weight:g}"))
    return variants


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """(mean, sample standard deviation, ddof=1) of ``values``; the deviation of one value is 0."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std of no values")
    mean = statistics.mean(values)
    if len(values) == 1:  # statistics.stdev needs two
        return mean, 0.0
    return mean, statistics.stdev(values, mean)


def format_mean_std(values: Sequence[float], digits: int = 1) -> str:
    """"73.8" for one value; "73.8 ± 2.1 (71.2, 74.0, 76.2)" for several: mean ± sample std, then
    each seed's value in seed order."""
    mean, std = mean_std(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    each = ", ".join(f"{v:.{digits}f}" for v in values)
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({each})"


def format_difference(values: Sequence[float], baseline: Sequence[float], digits: int = 2) -> str:
    """The difference of the means of ``values`` and ``baseline`` with its standard error
    sqrt(s_a^2 / n_a + s_b^2 / n_b) (sample deviations), e.g. "+0.72 ± 0.57"; without the error
    when either side has one value."""
    (mean_a, std_a), (mean_b, std_b) = mean_std(values), mean_std(baseline)
    text = f"{mean_a - mean_b:+.{digits}f}"
    if len(values) > 1 and len(baseline) > 1:
        text += f" ± {math.sqrt(std_a ** 2 / len(values) + std_b ** 2 / len(baseline)):.{digits}f}"
    return text


def logged_rows(output_dir: str) -> List[dict]:
    """The rows of ``output_dir/metrics.json`` (one JSON object per line, as Detectron2's
    JSONWriter writes them), in file order."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no metrics.json in '{output_dir}': the run logged nothing")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def loss_curve(output_dir: str, keys: Sequence[str]) -> Tuple[List[int], List[float]]:
    """(iterations, values) of the sum of the loss terms ``keys`` in every row of
    ``output_dir/metrics.json`` that has all of them (Detectron2 logs the median over its
    window)."""
    iterations, values = [], []
    for row in logged_rows(output_dir):
        if keys and all(k in row for k in keys):
            iterations.append(int(row["iteration"]))
            values.append(sum(float(row[k]) for k in keys))
    return iterations, values


def plot_seed_runs(path: str, title: str, metrics: Dict[str, Dict[str, List[float]]],
                   references: Dict[str, Dict[str, float]],
                   curves: Dict[str, Dict[str, List[Tuple[List[int], List[float]]]]]) -> str:
    """One PNG at ``path``: a panel per metric with each variant's value per seed (dots) and their
    mean (bar), a line per reference (the teacher); then a panel of loss curves.

    Args:
        metrics: {metric label: {variant: [value of seed 0, seed 1, ...]}}.
        references: {metric label: {name: value}}, drawn as dashed lines (e.g. the teacher).
        curves: {variant: {curve label: [(iterations, values) of each seed]}}, e.g. the task
            loss and loss_nst of the NST student; each seed thin, their mean thick.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(metrics) + (1 if curves else 0)
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.0), squeeze=False)
    axes = axes[0]
    for ax, (label, by_variant) in zip(axes, metrics.items()):
        names = list(by_variant)
        for x, name in enumerate(names):
            values = by_variant[name]
            mean, _ = mean_std(values)
            ax.bar(x, mean, width=0.6, color=f"C{x}", alpha=0.35)
            ax.scatter([x] * len(values), values, color=f"C{x}", s=18, zorder=3)
        for i, (ref_name, value) in enumerate(references.get(label, {}).items()):
            ax.axhline(value, color="k", ls="--", lw=1, label=ref_name)
        low = min(min(v) for v in by_variant.values())
        high = max([max(v) for v in by_variant.values()] + list(references.get(label, {}).values()))
        ax.set_ylim(max(0.0, low - 0.15 * (high - low + 1)), high + 0.1 * (high - low + 1))
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=25, ha="right", fontsize=7)
        ax.set_title(f"{label} (dots: seeds, bar: mean)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        if references.get(label):
            ax.legend(fontsize=7, loc="lower right")
    if curves:
        ax = axes[-1]
        styles = ("-", "--", ":", "-.")
        for v, (variant, by_label) in enumerate(curves.items()):
            for c, (label, runs) in enumerate(by_label.items()):
                color, style = f"C{v}", styles[c % len(styles)]
                for iterations, values in runs:
                    ax.plot(iterations, values, color=color, ls=style, lw=0.6, alpha=0.35)
                common = min(len(r[0]) for r in runs)
                if common:
                    mean = [statistics.mean(r[1][i] for r in runs) for i in range(common)]
                    ax.plot(runs[0][0][:common], mean, color=color, ls=style, lw=1.6,
                            label=f"{variant}: {label}")
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
        ax.set_title("losses (thin: seeds, thick: mean)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def invoked_command(argv: Sequence[str] = None) -> str:
    """The command line of this process as a user types it: ``python tools/demo_det.py --seeds 3``
    (a script inside the repository named relative to its root)."""
    argv = list(sys.argv if argv is None else argv)
    script = os.path.abspath(argv[0])
    if script.startswith(REPO_ROOT + os.sep):
        script = os.path.relpath(script, REPO_ROOT)
    return " ".join(["python", _quoted(script)] + [_quoted(a) for a in argv[1:]])


def _quoted(arg: str) -> str:
    """``arg`` as a shell reads it back: bare when it can be, in double quotes when it holds
    single quotes only (a list such as "['block3']"), else in single quotes."""
    quoted = shlex.quote(arg)
    if quoted != arg and not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return quoted


def write_report(path: str, table: str, wall_seconds: float, load_before: float,
                 command: str = None) -> str:
    """Write ``table`` to ``path`` (Markdown) under a list that says how to get it again: the
    command, the machine (CPU, torch, threads) with the load average before and after, the wall
    time."""
    header = [f"- command: `{command or invoked_command()}`",
              f"- machine: {machine_description()}; load average (1 min) {load_before:.2f} "
              f"before, {load_average():.2f} after",
              f"- wall time: {wall_seconds:.0f} s"]
    atomic_write_text("\n".join(header) + "\n\n" + table.rstrip("\n") + "\n", path)
    return path
