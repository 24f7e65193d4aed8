"""The summary printed at the end of a run."""

from frcnn.app.summary import metric_lines, took


def test_the_final_metrics_are_aligned_with_the_subsets_beside_them_and_counts_whole():
    metrics = {"val/images": 100, "val/map": 0.57914, "val/map_medium": 0.1, "train/loss": 2.0}
    assert metric_lines(metrics) == [
        "  val/images          100",
        "  val/map          0.5791",
        "  val/map_medium   0.1000",
    ]
    metrics |= {"subset/val/images": 30, "subset/val/map": 0.2}
    lines = metric_lines(metrics)
    assert lines[:3] == [
        "                    whole   subset  (validation split)",
        "  val/images          100       30",
        "  val/map          0.5791   0.2000",
    ]
    assert lines[3] == "  val/map_medium   0.1000"  # no subset figure


def test_a_runs_duration_reads_as_a_person_says_it():
    assert [took(s) for s in (0.4, 41, 59.6, 221, 3599, 3600, 7530)] == [
        "0 s",
        "41 s",
        "1 min 0 s",
        "3 min 41 s",
        "59 min 59 s",
        "1 h 00 min",
        "2 h 05 min",
    ]
