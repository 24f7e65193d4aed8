import optuna
import pytest
from optuna.trial import TrialState

from frcnn.app.summary import printed_rows
from frcnn.training.sweep import summarise, write_run_metrics
from tests.app.helpers import TINY, run


def test_summary_sorts_runs_by_the_optimised_metric(tmp_path):
    for job, (nms, value) in enumerate([(0.3, 0.41), (0.5, 0.52), (0.7, 0.47)]):
        (tmp_path / str(job)).mkdir()
        write_run_metrics(
            tmp_path / str(job),
            [f"model.roi_heads.nms_thresh={nms}"],
            {"val/map": value, "val/loss": 1.0},
        )
    rows = summarise(tmp_path, "val/map")
    assert [r["val/map"] for r in rows] == [0.52, 0.47, 0.41]
    table = (tmp_path / "summary.md").read_text().splitlines()
    assert table[0] == "| run | status | model.roi_heads.nms_thresh | val/map | val/loss |"
    assert table[2].startswith("| 1 | ok | 0.5 | 0.5200 |")
    assert len((tmp_path / "summary.csv").read_text().strip().splitlines()) == 4


def test_summary_puts_the_lowest_loss_first_and_runs_without_the_metric_last(tmp_path):
    for job, value in enumerate([0.9, None, 0.4, 0.7]):
        (tmp_path / str(job)).mkdir()
        write_run_metrics(tmp_path / str(job), [], {} if value is None else {"val/loss": value})
    rows = summarise(tmp_path, "val/loss")
    assert [r.get("val/loss") for r in rows] == [0.4, 0.7, 0.9, None]


def test_overrides_common_to_every_run_are_named_once_above_the_table(tmp_path):
    for job in range(12):
        (tmp_path / str(job)).mkdir()
        overrides = ["experiment=coco400", f"model.rpn.nms_thresh=0.{job % 3 + 6}"]
        write_run_metrics(tmp_path / str(job), overrides, {"val/map": job / 100})
    rows = summarise(tmp_path, "val/map")
    assert [r["run"] for r in rows][:3] == ["11", "10", "9"]  # job numbers, not strings
    lines = (tmp_path / "summary.md").read_text().splitlines()
    assert lines[0] == "Common to every run: experiment=coco400"
    assert lines[2] == "| run | status | model.rpn.nms_thresh | val/map |"
    assert "experiment" not in "".join(lines[3:])
    assert rows[0]["model.rpn.nms_thresh"] == "0.8"


def test_a_failed_run_is_listed_last_with_its_error(tmp_path):
    for job, nms in enumerate([0.6, 0.7]):
        (tmp_path / str(job)).mkdir()
        write_run_metrics(tmp_path / str(job), [f"model.rpn.nms_thresh={nms}"], {"val/map": 0.3})
    (tmp_path / "2").mkdir()
    write_run_metrics(
        tmp_path / "2", ["model.rpn.nms_thresh=2"], {}, "ValueError: must lie in (0, 1] | x"
    )
    rows = summarise(tmp_path, "val/map")
    assert [(r["run"], r["status"]) for r in rows] == [("0", "ok"), ("1", "ok"), ("2", "failed")]
    lines = (tmp_path / "summary.md").read_text().splitlines()
    assert lines[0].endswith("| val/map | error |")
    assert lines[-1] == "| 2 | failed | 2 |  | ValueError: must lie in (0, 1] \\| x |"


def test_the_table_says_how_long_each_run_took_to_a_tenth_of_a_second(tmp_path):
    for job, seconds in enumerate([212.34, 59.64]):
        (tmp_path / str(job)).mkdir()
        write_run_metrics(tmp_path / str(job), [f"seed={job}"], {"val/map": 0.3}, seconds=seconds)
    (tmp_path / "2").mkdir()
    write_run_metrics(tmp_path / "2", ["seed=2"], {}, "ValueError: x")  # its time: unknown
    summarise(tmp_path, "val/map")
    assert (tmp_path / "summary.md").read_text().splitlines()[2:] == [
        "| 0 | ok | 0 | 0.3000 | 212.3 |  |",
        "| 1 | ok | 1 | 0.3000 | 59.6 |  |",
        "| 2 | failed | 2 |  |  | ValueError: x |",
    ]
    assert (tmp_path / "summary.csv").read_text().splitlines()[0] == (
        "run,status,seed,val/map,seconds,error"
    )


def test_the_table_keeps_the_validation_figures_and_the_csv_everything(tmp_path):
    metrics = {"val/map": 0.3, "val/loss": 1.2, "val/rpn_cls": 0.1, "train/loss": 2.0}
    for job in range(2):
        (tmp_path / str(job)).mkdir()
        write_run_metrics(tmp_path / str(job), [f"seed={job}"], metrics)
    summarise(tmp_path, "val/map")
    assert (tmp_path / "summary.md").read_text().splitlines()[0] == (
        "| run | status | seed | val/map | val/loss |"
    )
    header = (tmp_path / "summary.csv").read_text().splitlines()[0]
    assert header == "run,status,seed,val/map,val/loss,val/rpn_cls,train/loss"


def test_the_same_optuna_search_again_continues_its_study_and_records_a_failed_trial(tmp_path):
    """`hparams_search=nms_iou_optuna` twice: the second call (one trial, which diverges on
    purpose) continues the stored study, where it is a failed trial; the sampled thresholds
    keep background below foreground."""
    search = ["hparams_search=nms_iou_optuna", *TINY, "trainer.max_epochs=1"]
    run("train.py", *search, "hydra.sweeper.n_trials=1", log_dir=tmp_path)
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    rows = summarise(sweep, "val/map_50")
    assert [r["status"] for r in rows] == ["ok"]
    for row in rows:
        fg, bg = (float(row[f"model.roi_heads.{k}_iou_thresh"]) for k in ("fg", "bg"))
        assert 0.3 <= bg <= fg <= 0.7 and 0.005 <= float(row["module.optimizer.lr"]) <= 0.05

    diverging = ["module.optimizer.lr=100", "callbacks.divergence.window=2", "trainer.max_epochs=2"]
    with pytest.raises(AssertionError, match="1 of 1 runs failed"):
        run("train.py", *search, "hydra.sweeper.n_trials=1", *diverging, log_dir=tmp_path)
    study = optuna.load_study(
        study_name="nms_iou", storage=f"sqlite:///{tmp_path / 'train' / 'optuna' / 'nms_iou.db'}"
    )
    states = [trial.state for trial in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL]
    # the second call drew a new point (seeded afresh, it would repeat the first one's)
    first, second = (trial.params["model.rpn.nms_thresh"] for trial in study.trials)
    assert first != second


def test_sampled_settings_are_shown_to_four_digits_in_the_table_and_whole_in_the_csv(tmp_path):
    for job, nms in enumerate(["0.649816047538945", "0.7"]):
        (tmp_path / str(job)).mkdir()
        write_run_metrics(tmp_path / str(job), [f"model.rpn.nms_thresh={nms}"], {"val/map": 0.3})
    summarise(tmp_path, "val/map")
    table = (tmp_path / "summary.md").read_text()
    assert "| 0 | ok | 0.6498 |" in table and "| 1 | ok | 0.7 |" in table
    assert "0.649816047538945" in (tmp_path / "summary.csv").read_text()


def test_a_sweep_of_no_run_says_so_and_fails(tmp_path):
    with pytest.raises(AssertionError, match=r"failed \(1\)(.|\n)*The sweep ran no run"):
        run("train.py", "-m", "seed=range(0,0)", *TINY, log_dir=tmp_path)


def test_a_summary_prints_the_worst_and_best_of_many_classes():
    """80 classes (COCO's; a sweep prints one table per trial): 5 worst, a count, 5 best; a
    few classes: all of them."""
    rows = [{"class": f"c{i}", "AP": i / 100} for i in range(78)]
    rows += [{"class": "none", "AP": float("nan")}] * 2  # no ground truth: last
    printed = printed_rows(rows)
    assert [r["class"] for r in printed] == [
        "c0", "c1", "c2", "c3", "c4", "... 70 more (per_class.csv)",
        "c73", "c74", "c75", "c76", "c77",
    ]  # fmt: skip
    assert printed_rows(rows[:11]) == rows[:11]
