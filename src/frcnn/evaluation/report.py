"""The report of one evaluation: `report/` with its tables (CSV, Markdown), pictures (PNG) and
an `index.md` that shows them together, from the detections the metrics came from."""

import csv
import math
from pathlib import Path

from frcnn.evaluation.confusion import confusion_matrix, normalised
from frcnn.evaluation.dataset_stats import dataset_statistics
from frcnn.evaluation.results import (
    RECALL,
    Evaluation,
    per_class_table,
    pr_curves,
    write_per_class,
)
from frcnn.evaluation.tables import markdown_table
from frcnn.evaluation.tide import TYPES, error_breakdown
from frcnn.structures import counted
from frcnn.visualization.report_figures import (
    confusion_figure,
    dataset_figure,
    errors_figure,
    pr_figure,
)


def dataset_markdown(stats: dict) -> str:
    columns = ["side (px)", "boxes", "pooled from", *stats["level_names"], "any level"]

    def cell(value):  # shares as percentages, "-" where a size range has no box
        if not isinstance(value, float):
            return value
        return "-" if math.isnan(value) else f"{value:.0%}"

    rows = [{k: cell(v) for k, v in row.items()} for row in stats["table"]]
    per_image = stats["boxes_per_image"].float()
    head = (
        f"{counted(len(per_image), 'image')}, {counted(len(stats['labels']), 'box', 'boxes')} "
        "(crowds left out), "
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
    `folder / "index.md"`, which shows them all, section by section."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [evaluation.name(label) for label in range(1, _num_classes(evaluation) + 1)]
    sections = [
        ["# Evaluation report", ""],
        metrics_section(evaluation),
        per_class_section(evaluation, folder),
        pr_section(evaluation, folder),
        confusion_section(evaluation, folder, names, score_threshold),
        errors_section(evaluation, folder),
    ]
    if model is not None and evaluation.image_size:
        sections.append(dataset_section(evaluation, folder, names, model))
    if sampling:
        sections.append(sampling_section(sampling, folder))
    index = folder / "index.md"
    index.write_text("\n".join(line for section in sections for line in section))
    return index


def metrics_section(evaluation: Evaluation) -> list[str]:
    rows = [{"metric": k, "value": v} for k, v in evaluation.metrics.items()]
    return [markdown_table(rows, ["metric", "value"])] if rows else []


def per_class_section(evaluation: Evaluation, folder: Path) -> list[str]:
    """per_class.csv and .md: the precision array's per-class APs, the worst first."""
    rows = per_class_table(
        evaluation.precision,
        evaluation.classes,
        evaluation.class_names,
        evaluation.boxes_per_class(),
    )
    table = write_per_class(rows, folder)
    return ["## Per class (the worst AP first)", "", "[per_class.csv](per_class.csv)", "", table]


def pr_section(evaluation: Evaluation, folder: Path) -> list[str]:
    """pr_curves.csv (every point) and .png."""
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
    return [
        "## Precision-recall curves",
        "",
        "COCOeval's own curves (all areas, 100 detections per image): the area under each is "
        "the class's AP at that IoU; the bold one is the mean over classes, its area the mAP. "
        "Every curve's points: [pr_curves.csv](pr_curves.csv).",
        "",
        "![PR curves](pr_curves.png)",
        "",
    ]


def confusion_section(
    evaluation: Evaluation, folder: Path, names: list[str], score_threshold: float
) -> list[str]:
    """confusion_matrix(_normalised).csv and .png: counts and row shares."""
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
    return [
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


def errors_section(evaluation: Evaluation, folder: Path) -> list[str]:
    """errors.csv and .png: TIDE's error types and the AP50 fixing each would gain."""
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
    return [
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


def dataset_section(evaluation: Evaluation, folder: Path, names: list[str], model) -> list[str]:
    """dataset.md and .png: the evaluated boxes against the model's anchors and pooler."""
    stats = dataset_statistics(
        evaluation.input_boxes, evaluation.input_labels, model, evaluation.image_size
    )
    text = dataset_markdown(stats)
    (folder / "dataset.md").write_text(text)
    dataset_figure(stats, names).savefig(folder / "dataset.png")
    return [
        "## The data and the anchors",
        "",
        f"The evaluated images' boxes at the {evaluation.image_size} px input. " + text,
        "![data and anchors](dataset.png)",
        "",
    ]


def sampling_section(sampling: list, folder: Path) -> list[str]:
    """sampling.csv: each class's training images and share before and after repeat factors."""
    rows = [
        {"class": name, "training images": images, "share before": 100 * before,
         "share after": 100 * after}
        for name, images, before, after in sampling
    ]  # fmt: skip
    _write_csv(folder / "sampling.csv", list(rows[0]), ([*r.values()] for r in rows))
    return [
        "## Training images per class, repeat-factor sampling",
        "",
        "The training images that have each class, and their share (%) of an epoch's "
        "images before and after repeat-factor sampling (data.train."
        "repeat_factor_threshold): rare classes are seen more often. "
        "[sampling.csv](sampling.csv)",
        "",
        markdown_table(rows, list(rows[0])),
    ]


def _num_classes(evaluation: Evaluation) -> int:
    if evaluation.class_names:
        return len(evaluation.class_names)
    labels = [
        int(t["labels"].max()) for t in [*evaluation.truths, *evaluation.preds] if len(t["labels"])
    ]
    return max(labels, default=0)
