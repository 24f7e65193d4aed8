"""The summary table of a Hydra multirun: every run's overrides and final metrics, or its error.

Each run stores its overrides and final metrics in `<run>/metrics.json`; a run that raised
stores its error there instead (the `SweepSummary` callback). The table is rewritten after every
run, so it is there whatever stops the sweep, and printed when the sweep ends.
"""

import csv
import json
import logging
import sys
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode

METRICS_FILE = "metrics.json"

log = logging.getLogger(__name__)


def write_run_metrics(
    output_dir: str | Path, overrides: list[str], metrics: dict, error: str | None = None
) -> Path:
    """Store one run's overrides and final metrics (or the `error` that ended it) where the
    sweep summary will find them."""
    path = Path(output_dir) / METRICS_FILE
    record = {"overrides": list(overrides), "metrics": metrics}
    if error is not None:
        record["error"] = error
    path.write_text(json.dumps(record, indent=2))
    return path


def summarise(sweep_dir: str | Path, sort_by: str | None = None) -> list[dict]:
    """Collect every run's record under `sweep_dir`; write summary.csv and summary.md there.

    One column per override that differs between runs; those common to every run are named
    once, above the Markdown table, which leaves the training figures and the four validation
    losses to the CSV. Rows are sorted by `sort_by`, best first: smallest first for
    a loss, largest first for anything else (mAP, recall); failed runs and runs without the
    metric last. Returns the rows.
    """
    sweep_dir = Path(sweep_dir)
    runs = [
        (path.parent.name, json.loads(path.read_text()))
        for path in sorted(sweep_dir.glob(f"*/{METRICS_FILE}"), key=lambda p: int_or_str(p))
    ]
    settings = [dict(o.split("=", 1) for o in run["overrides"] if "=" in o) for _, run in runs]
    keys = list(dict.fromkeys(k for s in settings for k in s))
    common = {
        k: settings[0][k]
        for k in keys
        if len(runs) > 1 and all(k in s and s[k] == settings[0][k] for s in settings)
    }
    rows = []
    for (name, run), setting in zip(runs, settings, strict=True):
        row = {"run": name, "status": "failed" if "error" in run else "ok"}
        row |= {k: setting.get(k, "") for k in keys if k not in common}
        rows.append(row | run["metrics"] | ({"error": run["error"]} if "error" in run else {}))
    if sort_by:
        sign = 1 if lower_is_better(sort_by) else -1
        rows.sort(key=lambda r: sign * r.get(sort_by, sign * float("inf")))  # missing: last
    columns = list(dict.fromkeys(k for row in rows for k in row))
    if "error" in columns:  # the longest cell, last
        columns.append(columns.pop(columns.index("error")))
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    header = "Common to every run: " + " ".join(f"{k}={v}" for k, v in common.items())
    table = markdown_table(rows, [c for c in columns if c in keys or shown_in_table(c)])
    (sweep_dir / "summary.md").write_text(f"{header}\n\n{table}" if common else table)
    return rows


def shown_in_table(column: str) -> bool:
    """The Markdown table (and what is printed) keeps the run, its status, settings and
    validation figures; the training figures and the four validation losses are in the CSV."""
    name = column.split("/")[-1]
    return not column.startswith(("train/", "subset/")) and not name.startswith(("rpn_", "roi_"))


def int_or_str(path: Path):
    """Runs in job order (2 before 10)."""
    name = path.parent.name
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def lower_is_better(metric: str) -> bool:
    """Losses (e.g. val/loss, val/roi_cls) are minimised; every other metric is maximised."""
    return "loss" in metric or metric.split("/")[-1].startswith(("rpn_", "roi_"))


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """Hydra callback: a failed run of a multirun is recorded in the summary and the sweep goes
    on; the summary is rewritten after every run and printed at the end; a sweep with failed
    runs exits with status 1 after its summary."""

    def on_job_end(self, config, job_return: JobReturn, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return  # a single run fails as usual, with its error
        output_dir = Path(config.hydra.runtime.output_dir)
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value  # the exception (the getter would re-raise it)
            message = f"{type(error).__name__}: {error}"
            log.error("Run %s failed: %s", config.hydra.job.num, message, exc_info=error)
            write_run_metrics(output_dir, config.hydra.overrides.task, {}, message)
            # recorded: the sweeper goes on to the other runs instead of re-raising it
            job_return.status, job_return.return_value = JobStatus.COMPLETED, None
        summarise(output_dir.parent, config.get("optimized_metric"))

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = summarise(sweep_dir, config.get("optimized_metric"))
        metric = config.get("optimized_metric")
        order = "lowest" if metric and lower_is_better(metric) else "highest"
        print(f"\nSweep summary ({len(rows)} runs, sorted by {metric}, {order} first):")
        print((sweep_dir / "summary.md").read_text())
        print(f"Written to {sweep_dir / 'summary.csv'} and {sweep_dir / 'summary.md'}")
        failed = sum(row["status"] == "failed" for row in rows)
        if failed:
            print(f"{failed} of {len(rows)} runs failed (their errors are in the table)")
            sys.exit(1)
