"""Hydra multiruns: the summary table of every run's overrides and final metrics (or its error),
trials in parallel with one GPU each, and the Optuna search's constrained parameters.

Each run stores its overrides, final metrics and duration in `<run>/metrics.json`; a run that
raised stores its error there instead (the `SweepSummary` callback). The table is rewritten
after every run, so it is there whatever stops the sweep, and printed when the sweep ends.
"""

import csv
import io
import json
import logging
import os
import sys
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from frcnn.evaluation.tables import markdown_table
from frcnn.structures import counted

METRICS_FILE = "metrics.json"
# the sweeper that stops at a failed run (it re-raises its error); Optuna's records the trial as
# failed (TrialState.FAIL) and goes on
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# the GPUs a sweep's parallel trials share (OneGPUPerTrial)
TRIAL_GPUS = "FRCNN_TRIAL_GPUS"

log = logging.getLogger(__name__)


def write_run_metrics(
    output_dir: str | Path,
    overrides: list[str],
    metrics: dict,
    error: str | None = None,
    seconds: float | None = None,
) -> Path:
    """Store one run's overrides and final metrics (or the `error` that ended it) and how many
    `seconds` it took where the sweep summary will find them."""
    path = Path(output_dir) / METRICS_FILE
    record = {"overrides": list(overrides), "metrics": metrics}
    if seconds is not None:
        record["seconds"] = round(seconds, 1)
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
    rows, common, keys = run_rows(runs)
    if sort_by:
        sign = 1 if improves(sort_by) == "min" else -1
        rows.sort(key=lambda r: sign * r.get(sort_by, sign * float("inf")))  # missing: last
    columns = list(dict.fromkeys(k for row in rows for k in row))
    if "error" in columns:  # the longest cell, last
        columns.append(columns.pop(columns.index("error")))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_whole(sweep_dir / "summary.csv", text.getvalue())
    header = "Common to every run: " + " ".join(f"{k}={v}" for k, v in common.items())
    table = markdown_table(rows, [c for c in columns if c in keys or shown_in_table(c)])
    write_whole(sweep_dir / "summary.md", f"{header}\n\n{table}" if common else table)
    return rows


def run_rows(runs: list[tuple[str, dict]]) -> tuple[list[dict], dict, list[str]]:
    """(run name, record) of each run -> (a row per run: its name, status, the overrides that
    differ between runs, its metrics, seconds (to a tenth) and error; the overrides common to every
    run (none for a single run); every override's key, in order)."""
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
        row |= run["metrics"] | ({"seconds": f"{run['seconds']:.1f}"} if "seconds" in run else {})
        rows.append(row | ({"error": run["error"]} if "error" in run else {}))
    return rows, common, keys


def write_whole(path: Path, text: str) -> None:
    """`text` into `path` whole (a temporary file beside it, renamed over it): trials that end
    at once (parallel launchers) rewrite the summary side by side."""
    part = path.with_name(f".{path.name}.{os.getpid()}")
    part.write_text(text, newline="")
    os.replace(part, path)


def shown_in_table(column: str) -> bool:
    """The Markdown table (and what is printed) keeps the run, its status, settings and
    validation figures; the training figures and the four validation losses are in the CSV."""
    name = column.split("/")[-1]
    return not column.startswith(("train/", "subset/")) and not name.startswith(("rpn_", "roi_"))


def int_or_str(path: Path):
    """Runs in job order (2 before 10)."""
    name = path.parent.name
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def improves(metric: str) -> str | None:
    """How `metric` improves: "min" for a loss (val/loss, val/roi_cls, train/loss_epoch), "max"
    for an AP or AR (val/map_50, val/mar_100, val/ap/<class>); None for the rest (image counts,
    speed, the epoch), which the summary sorts largest first."""
    name = str(metric).split("/", 1)[-1]
    if "loss" in name or name.startswith(("rpn_", "roi_")):
        return "min"
    return "max" if name.startswith(("map", "mar", "ap/")) else None


class SweepSummary(Callback):
    """Hydra callback: a failed run of a multirun is recorded in the summary and the sweep goes
    on; the summary is rewritten after every run and printed at the end; a sweep with failed
    runs exits with status 1 after its summary. (It also makes the folder of an Optuna study's
    sqlite file, which Optuna opens before any trial.)"""

    def on_multirun_start(self, config, **kwargs) -> None:
        storage = config.hydra.sweeper.get("storage")
        if isinstance(storage, str) and storage.startswith("sqlite:///"):
            Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)

    def on_job_end(self, config, job_return: JobReturn, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return  # a single run fails as usual, with its error
        output_dir = Path(config.hydra.runtime.output_dir)
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value  # the exception (the getter would re-raise it)
            message = f"{type(error).__name__}: {error}"
            log.error("Run %s failed: %s", config.hydra.job.num, message, exc_info=error)
            write_run_metrics(output_dir, config.hydra.overrides.task, {}, message)
            if config.hydra.sweeper._target_ == BASIC_SWEEPER:
                # recorded: it goes on to the other runs instead of re-raising the error
                job_return.status, job_return.return_value = JobStatus.COMPLETED, None
        summarise(output_dir.parent, config.get("optimized_metric"))

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not any(sweep_dir.glob(f"*/{METRICS_FILE}")):  # e.g. -m 'seed=range(0,0)'
            print(
                "\nThe sweep ran no run: its values give an empty grid (a range or a list "
                "with no value?); nothing to summarise"
            )
            sys.exit(1)
        rows = summarise(sweep_dir, config.get("optimized_metric"))
        metric = config.get("optimized_metric")
        order = "lowest" if metric and improves(metric) == "min" else "highest"
        print(f"\nSweep summary ({counted(len(rows), 'run')}, sorted by {metric}, {order} first):")
        print((sweep_dir / "summary.md").read_text())
        print(f"Written to {sweep_dir / 'summary.csv'} and {sweep_dir / 'summary.md'}")
        failed = sum(row["status"] == "failed" for row in rows)
        if failed:
            print(f"{failed} of {len(rows)} runs failed (their errors are in the table)")
            sys.exit(1)


class OneGPUPerTrial(Callback):
    """Hydra callback for trials run side by side on one machine (`hydra/launcher=local_gpus`,
    submitit's local executor, which would give every trial the same GPUs): trial n gets GPU
    n mod N of the N the sweep may use (CUDA_VISIBLE_DEVICES when the sweep starts, else all),
    set as its CUDA_VISIBLE_DEVICES before it starts CUDA."""

    def on_multirun_start(self, config, **kwargs) -> None:
        if TRIAL_GPUS not in os.environ:  # the trials' processes no longer see them
            import torch

            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            count = torch.cuda.device_count()
            os.environ[TRIAL_GPUS] = (
                visible if visible is not None else ",".join(map(str, range(count)))
            )

    def on_job_start(self, config, **kwargs) -> None:
        gpus = [g for g in os.environ.get(TRIAL_GPUS, "").split(",") if g]
        if os.environ.get("SUBMITIT_EXECUTOR") == "local" and gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus[config.hydra.job.num % len(gpus)]


def roi_background_iou(config, trial) -> None:
    """Optuna's `custom_search_space` for the ROI matcher: the background IoU threshold is
    drawn below the trial's foreground one (the config refuses bg > fg)."""
    fg = trial.params["model.roi_heads.fg_iou_thresh"]
    trial.suggest_float("model.roi_heads.bg_iou_thresh", 0.3, fg)


def study_seed(seed: int, storage: str, study_name: str) -> int:
    """The Optuna sampler's seed (hparams_search=nms_iou_optuna): the run's `seed` for a new
    study; for one that `storage` already holds, `seed` and its number of trials, so that the
    same command again draws new points (seeded afresh, the sampler's random start-up trials
    would repeat the stored ones)."""
    trials = stored_trials(storage, study_name)
    return seed if trials == 0 else seed * 1_000_003 + trials


def stored_trials(storage: str, study_name: str) -> int:
    """The number of trials of `study_name` in `storage` (an Optuna storage URL); 0 where there
    is no such study (a sqlite file is not created to find out)."""
    prefix = "sqlite:///"
    if storage.startswith(prefix) and not Path(storage[len(prefix) :]).is_file():
        return 0
    import optuna

    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:  # optuna's "no such study"
        return 0
