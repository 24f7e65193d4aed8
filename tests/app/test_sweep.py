from frcnn.sweep import summarise, write_run_metrics


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
    assert table[0] == "| run | overrides | val/map | val/loss |"
    assert table[2].startswith("| 1 | model.roi_heads.nms_thresh=0.5 | 0.5200 |")
    assert len((tmp_path / "summary.csv").read_text().strip().splitlines()) == 4


def test_summary_puts_the_lowest_loss_first_and_runs_without_the_metric_last(tmp_path):
    for job, value in enumerate([0.9, None, 0.4, 0.7]):
        (tmp_path / str(job)).mkdir()
        write_run_metrics(tmp_path / str(job), [], {} if value is None else {"val/loss": value})
    rows = summarise(tmp_path, "val/loss")
    assert [r.get("val/loss") for r in rows] == [0.4, 0.7, 0.9, None]
