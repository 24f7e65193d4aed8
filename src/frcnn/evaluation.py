"""Per-class figures of an evaluation, read from COCOeval's own accumulated precision array
(torchmetrics' `extended_summary`): the same matching as the summary numbers, not a second one.
"""

import csv
import math
from pathlib import Path

from torch import Tensor

from frcnn.sweep import markdown_table

COLUMNS = ("class", "AP", "AP50", "AP75", "APs", "APm", "APl", "boxes")


def per_class_table(
    precision: Tensor, classes: list[int], class_names: list[str] | None, boxes: dict[int, int]
) -> list[dict]:
    """One row per class, the worst AP first (classes without ground truth, AP nan, last).

    precision: (T, R, K, A, M) from COCOeval's accumulate: IoU thresholds 0.5:0.05:0.95, 101
    recall points, the K `classes` (labels, in COCOeval's order: sorted), areas all / small /
    medium / large, max detections 1 / 10 / 100 (the last is COCO's). -1 marks no ground
    truth. `boxes`: ground-truth boxes per label (crowds left out).
    """

    def ap(values: Tensor) -> float:
        valid = values[values > -1]
        return float(valid.mean()) if valid.numel() else math.nan

    rows = []
    for k, label in enumerate(classes):
        at = precision[:, :, k, :, -1]  # (T, R, A) at 100 detections
        rows.append(
            {
                "class": class_names[label - 1] if class_names else str(label),
                "AP": ap(at[..., 0]),
                "AP50": ap(at[0, :, 0]),
                "AP75": ap(at[5, :, 0]),
                "APs": ap(at[..., 1]),
                "APm": ap(at[..., 2]),
                "APl": ap(at[..., 3]),
                "boxes": boxes.get(label, 0),
            }
        )
    rows.sort(key=lambda row: (math.isnan(row["AP"]), row["AP"]))
    return rows


def write_per_class(rows: list[dict], folder: Path) -> str:
    """per_class.csv and per_class.md in `folder`; returns the Markdown table."""
    with open(folder / "per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown_table(rows, list(COLUMNS))
    (folder / "per_class.md").write_text(table)
    return table
