"""The report of one evaluation: `report/` with its tables (CSV, Markdown), pictures (PNG) and
an `index.md` that shows them together, from the detections the metrics came from."""

import csv
import math
from pathlib import Path

import matplotlib.colors
import matplotlib.ticker
import torch
from matplotlib.figure import Figure

from frcnn.evaluation.confusion import confusion_matrix, normalised
from frcnn.evaluation.dataset_stats import dataset_statistics
from frcnn.evaluation.results import (
    CURVE_IOUS,
    RECALL,
    Evaluation,
    mean_curve,
    per_class_table,
    pr_curves,
    write_per_class,
)
from frcnn.evaluation.tables import markdown_table
from frcnn.evaluation.tide import TYPES, error_breakdown

DPI = 100
LEGEND_CLASSES = 10  # more classes: thin unnamed curves (each is in pr_curves.csv)
ANNOTATED_CLASSES = 20  # fewer classes: counts written in the confusion matrix's cells


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1):
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False).flat


def _font(num_classes: int) -> float:
    return 9 if num_classes <= 30 else 7


def pr_figure(evaluation: Evaluation) -> Figure:
    """One panel per IoU of CURVE_IOUS: every class's curve and their mean (bold, its area the
    mAP), recall on x."""
    fig, axes = _figure(15, 5, ncols=len(CURVE_IOUS))
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
    that neither have a box nor were detected are left out (the CSV has them all)."""
    values = normalised(matrix) if share else matrix.double()
    seen = (matrix.sum(0) + matrix.sum(1) > 0).nonzero().squeeze(1).tolist()
    seen = [i for i in seen if i < len(names) - 1] + [len(names) - 1]  # background last
    values, names = values[seen][:, seen], [names[i] for i in seen]
    num = len(names)
    side = max(6.0, 0.17 * num + 3)
    fig, (ax,) = _figure(side, side - 0.8)
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
    fig, (ax,) = _figure(8, 4)
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
    counts = torch.bincount(stats["labels"], minlength=len(names) + 1)[1:]
    present = counts.nonzero().squeeze(1).tolist()  # classes without boxes: named in the title
    fig, axes = _figure(max(14, 0.18 * len(present) + 6), 9, ncols=2, nrows=2)
    per_class, per_image, sides, coverage = axes
    per_class.bar(range(len(present)), counts[present].tolist(), color="tab:blue")
    per_class.set_xticks(
        range(len(present)), [names[i] for i in present], rotation=90, fontsize=_font(len(present))
    )
    missing = [names[i] for i in range(len(names)) if i not in present]
    title = f"Boxes per class ({int(counts.sum())} in all)"
    if missing:
        title += (
            f"; none of {', '.join(missing)}"
            if len(missing) <= 5
            else f"; none of {len(missing)} classes"
        )
    per_class.set(ylabel="boxes", title=title)
    counts_per_image = stats["boxes_per_image"].tolist()
    edges = [k - 0.5 for k in range(max(counts_per_image, default=0) + 2)]  # one bar per count
    per_image.hist(counts_per_image, bins=edges, color="tab:blue", rwidth=0.8)
    per_image.set(xlabel="boxes in the image", ylabel="images", title="Boxes per image")
    finite = stats["sides"][stats["sides"] > 0]
    if len(finite):
        bins = torch.logspace(
            math.log10(max(float(finite.min()), 1)), math.log10(float(finite.max()) + 1), 40
        )
        sides.hist(finite.tolist(), bins=bins.tolist(), color="tab:blue")
    sides.set_xscale("log")
    sides.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    sides.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for edge, name in stats["level_edges"]:
        sides.axvline(edge, color="black", ls="--", lw=1)
        sides.text(
            edge, 1.0, f" {name}", transform=sides.get_xaxis_transform(), va="top", fontsize=8
        )
    sides.set(
        xlabel="box side sqrt(area), input pixels",
        ylabel="boxes",
        title="Box sizes and the FPN level that pools them (dashed: level changes)",
    )
    columns = [*stats["level_names"], "any level"]
    rows = [r for r in stats["table"] if r["boxes"]]
    grid = torch.tensor([[r[c] for c in columns] for r in rows]).reshape(len(rows), len(columns))
    coverage.imshow(grid.numpy(), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for (i, j), value in zip(
        torch.cartesian_prod(torch.arange(len(rows)), torch.arange(len(columns))).tolist(),
        grid.flatten().tolist(),
        strict=True,
    ):
        coverage.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=8)
    coverage.set_xticks(range(len(columns)), columns)
    coverage.set_yticks(range(len(rows)), [f"{r['side (px)']} ({r['boxes']})" for r in rows])
    coverage.set(
        xlabel="anchors of",
        ylabel="box side, px (boxes)",
        title=f"Boxes with an anchor of IoU >= {stats['fg_iou']} (RPN foreground)",
    )
    return fig


def dataset_markdown(stats: dict) -> str:
    columns = ["side (px)", "boxes", "pooled from", *stats["level_names"], "any level"]

    def cell(value):  # shares as percentages, "-" where a size range has no box
        if not isinstance(value, float):
            return value
        return "-" if math.isnan(value) else f"{value:.0%}"

    rows = [{k: cell(v) for k, v in row.items()} for row in stats["table"]]
    per_image = stats["boxes_per_image"].float()
    head = (
        f"{len(per_image)} images, {len(stats['labels'])} boxes (crowds left out), "
        f"{float(per_image.mean()) if len(per_image) else 0:.1f} per image "
        f"(at most {int(per_image.max()) if len(per_image) else 0}). Anchor coverage: the share "
        f"of boxes whose best anchor has IoU >= {stats['fg_iou']} (the RPN's foreground), per "
        "level and on any level; the rest are trained on through their best anchor alone.\n\n"
    )
    return head + markdown_table(rows, columns)


def _write_csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_report(
    evaluation: Evaluation,
    folder: Path,
    model=None,
    score_threshold: float = 0.5,
    sampling: list | None = None,
) -> Path:
    """Every table and picture of `evaluation` into `folder` (made), the data and anchor
    statistics too where the `model` is given, and the training set's classes before and after
    repeat-factor sampling where `sampling` (`repeat_factors.class_table`) is given; returns
    `folder / "index.md"`."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [evaluation.name(label) for label in range(1, _num_classes(evaluation) + 1)]
    sections = ["# Evaluation report", ""]
    if evaluation.metrics:
        rows = [{"metric": k, "value": v} for k, v in evaluation.metrics.items()]
        sections += [markdown_table(rows, ["metric", "value"])]

    boxes = evaluation.boxes_per_class()
    table = write_per_class(
        per_class_table(evaluation.precision, evaluation.classes, evaluation.class_names, boxes),
        folder,
    )
    sections += [
        "## Per class (the worst AP first)",
        "",
        "[per_class.csv](per_class.csv)",
        "",
        table,
    ]

    curves = pr_curves(evaluation.precision)
    _write_csv(
        folder / "pr_curves.csv",
        ["iou", "class", "recall", "precision"],
        (
            [iou, evaluation.name(label), f"{r:.2f}", f"{p:.6f}"]
            for iou, per_class in curves.items()
            for k, label in enumerate(evaluation.classes)
            if not per_class[k].isnan().all()
            for r, p in zip(RECALL.tolist(), per_class[k].tolist(), strict=True)
        ),
    )
    pr_figure(evaluation).savefig(folder / "pr_curves.png")
    sections += [
        "## Precision-recall curves",
        "",
        "COCOeval's own curves (all areas, 100 detections per image): the area under each is "
        "the class's AP at that IoU; the bold one is the mean over classes, its area the mAP. "
        "Every curve's points: [pr_curves.csv](pr_curves.csv).",
        "",
        "![PR curves](pr_curves.png)",
        "",
    ]

    matrix = confusion_matrix(
        evaluation.preds, evaluation.truths, len(names), score=score_threshold
    )
    axis = [*names, "background"]
    for share, suffix in ((False, ""), (True, "_normalised")):
        values = normalised(matrix) if share else matrix
        _write_csv(
            folder / f"confusion_matrix{suffix}.csv",
            ["true \\ detected", *axis],
            ([name, *values[i].tolist()] for i, name in enumerate(axis)),
        )
        confusion_figure(matrix, axis, share, score_threshold).savefig(
            folder / f"confusion_matrix{suffix}.png"
        )
    sections += [
        "## Confusion matrix",
        "",
        f"Each ground-truth box counted in its row by the class of the detection (score >= "
        f"{score_threshold}) matched to it at IoU 0.5, whatever its class; the background row "
        "counts detections matched to no box (false positives), the background column the "
        "boxes no detection matched (misses). [counts](confusion_matrix.csv), "
        "[row shares](confusion_matrix_normalised.csv).",
        "",
        "![confusion matrix, row shares](confusion_matrix_normalised.png)",
        "",
        "![confusion matrix, counts](confusion_matrix.png)",
        "",
    ]

    breakdown = error_breakdown(evaluation.preds, evaluation.truths)
    rows = [
        {
            "error": t,
            "errors": breakdown["count"][t],
            "AP50 gained by fixing": 100 * breakdown["dAP"][t],
        }
        for t in TYPES
    ]
    _write_csv(folder / "errors.csv", list(rows[0]), ([*r.values()] for r in rows))
    errors_figure(breakdown).savefig(folder / "errors.png")
    sections += [
        "## Where the AP goes",
        "",
        f"AP50 {100 * breakdown['AP50']:.2f} (COCO's). Every false positive and miss sorted "
        "into TIDE's error types; each row is the AP50 (points) gained by fixing that type "
        "alone (frcnn.evaluation.tide says how each is fixed).",
        "",
        markdown_table(rows, list(rows[0])),
        "![errors](errors.png)",
        "",
    ]

    if model is not None and evaluation.image_size:
        stats = dataset_statistics(
            evaluation.input_boxes, evaluation.input_labels, model, evaluation.image_size
        )
        text = dataset_markdown(stats)
        (folder / "dataset.md").write_text(text)
        dataset_figure(stats, names).savefig(folder / "dataset.png")
        sections += [
            "## The data and the anchors",
            "",
            f"The evaluated images' boxes at the {evaluation.image_size} px input. " + text,
            "![data and anchors](dataset.png)",
            "",
        ]
    if sampling:
        rows = [
            {"class": name, "training images": images, "share before": 100 * before,
             "share after": 100 * after}
            for name, images, before, after in sampling
        ]  # fmt: skip
        _write_csv(folder / "sampling.csv", list(rows[0]), ([*r.values()] for r in rows))
        sections += [
            "## Training images per class, repeat-factor sampling",
            "",
            "The training images that have each class, and their share (%) of an epoch's "
            "images before and after repeat-factor sampling (data.train."
            "repeat_factor_threshold): rare classes are seen more often. "
            "[sampling.csv](sampling.csv)",
            "",
            markdown_table(rows, list(rows[0])),
        ]
    index = folder / "index.md"
    index.write_text("\n".join(sections))
    return index


def _num_classes(evaluation: Evaluation) -> int:
    if evaluation.class_names:
        return len(evaluation.class_names)
    labels = [
        int(t["labels"].max()) for t in [*evaluation.truths, *evaluation.preds] if len(t["labels"])
    ]
    return max(labels, default=0)
