"""The evaluation report's pictures: PR curves, the confusion matrix, where the AP goes (TIDE's
error types), and the data against the anchors."""

import math

import matplotlib.colors
import matplotlib.ticker
import torch
from matplotlib.figure import Figure
from torch import Tensor

from frcnn.evaluation.confusion import classes_by_errors, normalised
from frcnn.evaluation.results import (
    CURVE_IOUS,
    FIGURE_CLASSES,
    RECALL,
    Evaluation,
    mean_curve,
    pr_curves,
)
from frcnn.evaluation.tide import TYPES
from frcnn.visualization.canvas import figure
from frcnn.visualization.fonts import label_font

LEGEND_CLASSES = 10  # more classes: thin unnamed curves (each is in pr_curves.csv)
ANNOTATED_CLASSES = 20  # fewer classes: counts written in the confusion matrix's cells


def _font(num_classes: int) -> float:
    return 9 if num_classes <= 30 else 7


def pr_figure(evaluation: Evaluation) -> Figure:
    """One panel per IoU of CURVE_IOUS: every class's curve and their mean (bold, its area the
    mAP), recall on x."""
    label_font(evaluation.class_names)  # (matplotlib's for the characters DejaVu Sans lacks)
    fig, axes = figure(15, 5, ncols=len(CURVE_IOUS))
    curves = pr_curves(evaluation.precision)
    named = len(evaluation.classes) <= LEGEND_CLASSES
    for ax, (iou, per_class) in zip(axes, curves.items(), strict=True):
        for k, label in enumerate(evaluation.classes):
            if not per_class[k].isnan().all():
                name = f"{evaluation.name(label)} ({float(per_class[k].mean()):.3f})"
                ax.plot(
                    RECALL.numpy(),
                    per_class[k].numpy(),
                    lw=1.2 if named else 0.5,
                    alpha=1 if named else 0.35,
                    color=None if named else "grey",
                    label=name if named else None,
                )
        mean = mean_curve(per_class)
        ax.plot(
            RECALL.numpy(),
            mean.numpy(),
            lw=3,
            color="black",
            label=f"all classes ({float(mean.mean()):.3f})",
        )
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
        ax.set_title(f"IoU {iou}" + (" (mean of the 10 IoUs: COCO's AP)" if ":" in iou else ""))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    return fig


def confusion_figure(matrix: torch.Tensor, names: list[str], share: bool, score: float) -> Figure:
    """The matrix as a heat map: rows the true class, columns the detected one (background
    last on both); `share` colours each row's fractions, else the counts (log scale). Classes
    that neither have a box nor were detected are left out, and of more than FIGURE_CLASSES
    all but the FIGURE_CLASSES with the most errors (the CSV has them all)."""
    label_font(names)  # (matplotlib's for the characters DejaVu Sans lacks)
    values = normalised(matrix) if share else matrix.double()
    ranked = classes_by_errors(matrix)
    shown = [*sorted(ranked[:FIGURE_CLASSES]), len(names) - 1]  # background last
    values, names = values[shown][:, shown], [names[i] for i in shown]
    num = len(names)
    side = max(6.0, 0.17 * num + 3)
    fig, (ax,) = figure(side, side - 0.8)
    norm = (
        matplotlib.colors.Normalize(0, 1)
        if share
        else matplotlib.colors.LogNorm(1, max(float(values.max()), 2))
    )
    image = ax.imshow(values.masked_fill(values == 0, math.nan).numpy(), cmap="viridis", norm=norm)
    ticks = range(num)
    font = _font(num)
    ax.set_xticks(ticks, names, rotation=90, fontsize=font)
    ax.set_yticks(ticks, names, fontsize=font)
    ax.set(xlabel="detected as", ylabel="true class")
    what = "share of each row" if share else "boxes"
    if len(ranked) > FIGURE_CLASSES:
        what += f"; the {FIGURE_CLASSES} of {len(ranked)} classes with the most errors"
    ax.set_title(f"Confusion matrix, IoU 0.5, score >= {score}\n({what})")
    if num <= ANNOTATED_CLASSES:
        for (row, col), value in zip(
            torch.cartesian_prod(torch.arange(num), torch.arange(num)).tolist(),
            values.flatten().tolist(),
            strict=True,
        ):
            if value:
                ax.text(
                    col,
                    row,
                    f"{value:.2f}" if share else f"{int(value)}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white",
                )
    fig.colorbar(image, ax=ax, shrink=0.6)
    return fig


def errors_figure(breakdown: dict) -> Figure:
    """The AP50 gained by fixing each error type alone, as bars (with the errors' counts)."""
    fig, (ax,) = figure(8, 4)
    gains = [100 * breakdown["dAP"][t] for t in TYPES]
    bars = ax.barh(TYPES, gains, color="tab:red")
    ax.bar_label(
        bars,
        [f"{g:.1f} ({breakdown['count'][t]})" for g, t in zip(gains, TYPES, strict=True)],
        padding=3,
        fontsize=9,
    )
    ax.invert_yaxis()
    ax.set_xlabel("AP50 points gained by fixing this error type alone (errors)")
    ax.set_title(f"Where the AP50 goes (AP50 = {100 * breakdown['AP50']:.1f}; TIDE's error types)")
    ax.set_xlim(0, max(gains + [1]) * 1.25)
    return fig


def dataset_figure(stats: dict, names: list[str]) -> Figure:
    """Boxes per class and per image, box sides against the pooled levels, anchor coverage."""
    label_font(names)  # (matplotlib's for the characters DejaVu Sans lacks)
    counts = torch.bincount(stats["labels"], minlength=len(names) + 1)[1:]
    present = counts.nonzero().squeeze(1).tolist()  # classes without boxes: named in the title
    fig, axes = figure(max(14, 0.18 * min(len(present), FIGURE_CLASSES) + 6), 9, ncols=2, nrows=2)
    per_class, per_image, sides, coverage = axes
    _boxes_per_class(per_class, counts, present, names)
    _boxes_per_image(per_image, stats["boxes_per_image"].tolist())
    _box_sides(sides, stats["sides"], stats["level_edges"])
    _anchor_coverage(coverage, stats)
    return fig


def _boxes_per_class(ax, counts: Tensor, present: list[int], names: list[str]) -> None:
    """A bar per class with boxes (counts: (C,)), named; of more than FIGURE_CLASSES, the most
    boxes first and unnamed (a long tail's shape); the classes without any named in the title."""
    many = len(present) > FIGURE_CLASSES
    heights = counts[present].sort(descending=True).values if many else counts[present]
    ax.bar(range(len(present)), heights.tolist(), color="tab:blue")
    if many:
        ax.set_xlabel(f"{len(present)} classes, the most boxes first (each: per_class.csv)")
    else:
        ax.set_xticks(
            range(len(present)),
            [names[i] for i in present],
            rotation=90,
            fontsize=_font(len(present)),
        )
    missing = [names[i] for i in range(len(names)) if i not in present]
    title = f"Boxes per class ({int(counts.sum())} in all)"
    if missing:
        title += (
            f"; none of {', '.join(missing)}"
            if len(missing) <= 5
            else f"; none of {len(missing)} classes"
        )
    ax.set(ylabel="boxes", title=title)


def _boxes_per_image(ax, counts_per_image: list[int]) -> None:
    """How many images hold each number of boxes: a bar per count."""
    edges = [k - 0.5 for k in range(max(counts_per_image, default=0) + 2)]
    ax.hist(counts_per_image, bins=edges, color="tab:blue", rwidth=0.8)
    ax.set(xlabel="boxes in the image", ylabel="images", title="Boxes per image")


def _box_sides(ax, sides: Tensor, level_edges: list) -> None:
    """A log-scale histogram of the boxes' sides (sqrt(area), input pixels), a dashed line where
    the FPN level that pools them changes (`level_edges`: (side, level name))."""
    finite = sides[sides > 0]
    if len(finite):
        bins = torch.logspace(
            math.log10(max(float(finite.min()), 1)), math.log10(float(finite.max()) + 1), 40
        )
        ax.hist(finite.tolist(), bins=bins.tolist(), color="tab:blue")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for edge, name in level_edges:
        ax.axvline(edge, color="black", ls="--", lw=1)
        ax.text(edge, 1.0, f" {name}", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    ax.set(
        xlabel="box side sqrt(area), input pixels",
        ylabel="boxes",
        title="Box sizes and the FPN level that pools them (dashed: level changes)",
    )


def _anchor_coverage(ax, stats: dict) -> None:
    """The share of boxes of each side range with an anchor of foreground IoU, per level and at
    any level: a red-to-green grid."""
    columns = [*stats["level_names"], "any level"]
    rows = [r for r in stats["table"] if r["boxes"]]
    grid = torch.tensor([[r[c] for c in columns] for r in rows]).reshape(len(rows), len(columns))
    ax.imshow(grid.numpy(), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for (i, j), value in zip(
        torch.cartesian_prod(torch.arange(len(rows)), torch.arange(len(columns))).tolist(),
        grid.flatten().tolist(),
        strict=True,
    ):
        ax.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), [f"{r['side (px)']} ({r['boxes']})" for r in rows])
    ax.set(
        xlabel="anchors of",
        ylabel="box side, px (boxes)",
        title=f"Boxes with an anchor of IoU >= {stats['fg_iou']} (RPN foreground)",
    )
