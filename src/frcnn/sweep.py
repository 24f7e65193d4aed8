"""A summary table of every run of a Hydra multirun, written when the sweep ends."""

import csv
import json
from pathlib import Path

from hydra.experimental.callback import Callback

METRICS_FILE = "metrics.json"


def write_run_metrics(output_dir: str | Path, overrides: list[str], metrics: dict) -> Path:
    """Store one run's overrides and final metrics where the sweep summary will find them."""
    path = Path(output_dir) / METRICS_FILE
    path.write_text(json.dumps({"overrides": list(overrides), "metrics": metrics}, indent=2))
    return path


def summarise(sweep_dir: str | Path, sort_by: str | None = None) -> list[dict]:
    """Collect every run's metrics under `sweep_dir`; write summary.csv and summary.md there.

    Rows are sorted by `sort_by`, best first: smallest first for a loss, largest first for
    anything else (mAP, recall). Returns the rows.
    """
    sweep_dir = Path(sweep_dir)
    rows = []
    for path in sorted(sweep_dir.glob(f"*/{METRICS_FILE}"), key=lambda p: p.parent.name):
        run = json.loads(path.read_text())
        rows.append(
            {"run": path.parent.name, "overrides": " ".join(run["overrides"]), **run["metrics"]}
        )
    if sort_by:
        sign = 1 if lower_is_better(sort_by) else -1
        rows.sort(key=lambda r: sign * r.get(sort_by, sign * float("inf")))  # missing: last
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (sweep_dir / "summary.md").write_text(markdown_table(rows, columns))
    return rows


def lower_is_better(metric: str) -> bool:
    """Losses (e.g. val/loss, val/roi_cls) are minimised; every other metric is maximised."""
    return "loss" in metric or metric.split("/")[-1].startswith(("rpn_", "roi_"))


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, summarise every run and print the table."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = summarise(sweep_dir, config.get("optimized_metric"))
        metric = config.get("optimized_metric")
        order = "lowest" if metric and lower_is_better(metric) else "highest"
        print(f"\nSweep summary ({len(rows)} runs, sorted by {metric}, {order} first):")
        print((sweep_dir / "summary.md").read_text())
        print(f"Written to {sweep_dir / 'summary.csv'} and {sweep_dir / 'summary.md'}")
