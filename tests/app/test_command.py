"""What every entry point shares: its run folder and how its errors are reported."""

import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser

from frcnn.app.build import require_extra
from frcnn.app.command import deliberate, run_dir
from frcnn.checks import check_flag, check_number, path_of, typed_setting
from tests.app.helpers import ROOT, TINY, composed, refused, run, run_script


def test_errors_this_project_raises_are_told_apart_from_bugs():
    try:
        check_number("model.rpn.nms_thresh", 2, 0, 1, open_low=True)
    except ValueError as error:
        assert deliberate(error) == "ValueError: model.rpn.nms_thresh=2: must lie in (0, 1]"
    try:
        torch.zeros(2) + torch.zeros(3)  # a failing operation, not a raise of this project
    except RuntimeError as error:
        assert deliberate(error) is None
    try:
        try:
            check_number("data.batch_size", "abc", 1, integer=True)
        except ValueError as cause:
            raise RuntimeError("Error in call to target 'frcnn...'") from cause
    except RuntimeError as error:  # as Hydra wraps a constructor's error
        assert deliberate(error).startswith("ValueError: data.batch_size='abc'")


@pytest.mark.parametrize(
    ("value", "typed"),
    [
        (["head", "hard-hat", "Hat_2"], "data.class_names=[head,hard-hat,Hat_2]"),
        (["traffic light", "café"], "\"data.class_names=['traffic light','café']\""),
        (["it's", 'say "hi"', "$HOME", "C:\\data", "a\\'b", "end\\"], None),
        (["true", "null", "1", "x.y", "(a)"], None),
        ([[16], [32.5]], "data.class_names=[[16],[32.5]]"),
        ([1, None, True, "bn"], "data.class_names=[1,null,true,bn]"),
    ],
)
def test_a_setting_as_users_type_it_is_read_back_by_the_shell_and_hydra(tmp_path, value, typed):
    written = typed_setting("data.class_names", value)
    assert typed is None or written == typed
    words = subprocess.run(  # bash as users' shell reads it
        ["bash", "-c", f"printf '%s\\0' {written}"], cwd=tmp_path, capture_output=True
    ).stdout.split(b"\0")
    assert len(words) == 2
    word = words[0].decode()
    override = OverridesParser.create().parse_override(word)
    assert (override.key_or_group, override.value()) == ("data.class_names", value)


def hydra_reads(word: str):
    """A setting's value as Hydra reads it from the command line."""
    return OverridesParser.create().parse_override(f"key={word}").value()


@pytest.mark.parametrize("word", ["no", "off", "0", "1", "yes"])
def test_a_switch_typed_as_another_word_is_refused_as_python_would_read_it_otherwise(word):
    with pytest.raises(ValueError, match=f"^data.pin_memory={hydra_reads(word)!r}: must be true"):
        check_flag("data.pin_memory", hydra_reads(word))
    for word in ("true", "False", "TRUE"):
        check_flag("data.pin_memory", hydra_reads(word))
    check_flag("report", "auto", "auto")
    with pytest.raises(ValueError, match=r"^report='no': must be true, false or auto$"):
        check_flag("report", "no", "auto")
    with pytest.raises(ValueError, match=r"^data.normalized=1: must be true, false or null$"):
        check_flag("data.normalized", 1, None)


def test_a_path_that_hydra_reads_as_a_number_is_refused_saying_how_to_write_it():
    """(A traceback from pathlib before, in every command.)"""
    with pytest.raises(
        ValueError,
        match=r"^input=2024: Hydra read a number, not a path; write "
        r"it as one, e.g. ./2024$",
    ):
        path_of("input", hydra_reads("2024"))
    with pytest.raises(ValueError, match=r"^input=1000.0: .* write it as one, with ./ before it$"):
        path_of("input", hydra_reads("1e3"))
    assert path_of("input", hydra_reads("./2024")) == Path("2024")
    assert path_of("input", hydra_reads("007")) == Path("007")
    assert path_of("output", "~/out") == Path.home() / "out"
    with pytest.raises(ValueError, match=r"^output=null: give a path$"):
        path_of("output", None)


def test_a_bad_value_is_one_message_without_traceback(tmp_path):
    printed = refused("train.py", "model.rpn.nms_thresh=2", *TINY, log_dir=tmp_path)
    assert "model.rpn.nms_thresh=2: must lie in (0, 1]" in printed


def test_only_a_resumed_training_run_goes_on_in_its_folder(tmp_path):
    run_folder = tmp_path / "logs" / "train" / "runs" / "2026-01-01_00-00-00"
    (run_folder / ".hydra").mkdir(parents=True)
    (run_folder / ".hydra" / "config.yaml").write_text("{}")
    checkpoint = run_folder / "checkpoints" / "last.ckpt"
    new = str(tmp_path / "new")
    assert run_dir(new, "train", str(checkpoint)) == str(run_folder)
    assert run_dir(new, "eval", str(checkpoint)) == new  # evaluating writes a folder of its own
    # runs that start in the same second (one `new` name): a folder each, created at once
    assert run_dir(new, "train", str(tmp_path / "elsewhere" / "x.ckpt")) == f"{new}_1"
    assert run_dir(new, "train", None) == f"{new}_2"
    assert all(Path(f"{new}{suffix}").is_dir() for suffix in ("", "_1", "_2"))


def test_a_slurm_jobs_tasks_and_its_requeued_self_share_one_folder(tmp_path, monkeypatch):
    new = str(tmp_path / "logs" / "train" / "runs" / "2026-01-01_00-00-00")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # an interactive allocation: runs of its own
    assert run_dir(new, "train", None) == new
    monkeypatch.setenv("SLURM_JOB_NAME", "frcnn")  # an sbatch job: no folder made for it here
    assert run_dir(new, "train", None) == str(tmp_path / "logs/train/runs/slurm-4242")
    monkeypatch.setenv("SLURM_STEP_ID", "1")  # a second srun of one allocation
    assert run_dir(new, "train", None) == str(tmp_path / "logs/train/runs/slurm-4242.1")
    assert run_dir(new, "eval", None) == f"{new}_1"  # a folder of its own, not the first's


def test_runs_started_in_the_same_second_get_a_folder_each(tmp_path):
    """A job array's runs start together: the folder that this run's time names already exists
    (every second of the next two minutes is taken here), so it gets one with a suffix, and
    the other run's folder is left as it was."""
    runs = tmp_path / "train" / "runs"
    taken = the_next_two_minutes_taken(runs)
    run("train.py", "trainer.max_epochs=1", *TINY, log_dir=tmp_path)
    (mine,) = [path for path in runs.iterdir() if path not in taken]
    assert mine.name.endswith("_1") and Path(mine.name.removesuffix("_1")) in {
        Path(t.name) for t in taken
    }
    assert (mine / ".hydra" / "config.yaml").is_file() and (mine / "metrics.json").is_file()
    assert (mine / "checkpoints" / "last.ckpt").is_file()
    assert all([p.name for p in folder.iterdir()] == ["other_run.txt"] for folder in taken)


def the_next_two_minutes_taken(folder: Path) -> list[Path]:
    """A folder for each second of the next two minutes in `folder`, as another run's."""
    start = datetime.now()
    taken = [
        folder / (start + timedelta(seconds=s)).strftime("%Y-%m-%d_%H-%M-%S") for s in range(120)
    ]
    for path in taken:
        path.mkdir(parents=True)
        (path / "other_run.txt").write_text("")
    return taken


def test_a_failed_run_of_a_sweep_is_recorded_and_the_others_run(tmp_path):
    """LR 100 explodes (held finite by gradient clipping, stopped by the divergence rule); LR
    0.02 trains. The sweep started in the same second as another (every second of the next two
    minutes is taken): it gets a folder of its own, as a run does."""
    taken = the_next_two_minutes_taken(tmp_path / "train" / "multiruns")
    grid = ["-m", "module.optimizer.lr=100,0.02", "callbacks.divergence.window=2"]
    try:
        run("train.py", *grid, "trainer.max_epochs=2", *TINY, log_dir=tmp_path)
    except AssertionError as error:
        printed = str(error)
    assert "train.py failed (1)" in printed  # the sweep's status says that a run failed
    assert "1 of 2 runs failed" in printed
    assert all([p.name for p in folder.iterdir()] == ["other_run.txt"] for folder in taken)
    (sweep,) = set((tmp_path / "train" / "multiruns").iterdir()) - set(taken)
    assert sweep.name.endswith("_1")
    table = (sweep / "summary.md").read_text()
    assert "| 1 | ok | 0.02 |" in table
    assert "| 0 | failed | 100 |" in table and "The training loss exploded" in table
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file()
    # report=auto: no report for a sweep's trials, their per-class tables only
    assert {p.name for p in (sweep / "1" / "report").iterdir()} == {"per_class.csv", "per_class.md"}


def test_each_run_of_a_sweep_is_freed_before_the_next_starts(tmp_path):
    """What a run made and holds in a reference cycle (a Trainer and its module hold each
    other) is freed when the run ends. Python's cyclic collector is off here, as in effect it
    is for a run's objects: they are old by the time they become garbage."""
    import gc
    import weakref

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    from frcnn.app.command import command

    class Held:  # a trainer holding its module, which holds the trainer
        def __init__(self):
            self.weights = torch.zeros(1000)
            self.itself = self

    made = []

    @command
    def task(cfg):
        held = Held()
        made.append(weakref.ref(held))
        return held.weights.numel()

    cfg = composed(tmp_path, "trainer.max_steps=1")
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.runtime.output_dir = str(tmp_path / "0")
    hydra = HydraConfig.instance()
    before = hydra.cfg
    hydra.set_config(cfg)
    gc.disable()
    try:
        assert task(cfg) == 1000 and made[0]() is None
        assert task(cfg) == 1000 and made[1]() is None
    finally:
        gc.enable()
        hydra.cfg = before  # the next test in this process finds no multirun


@pytest.mark.parametrize(
    ("extra", "module", "pip"),
    [
        ("export", "onnxruntime", r"`pip install -e '\.\[export\]'`"),
        ("video", "av", r"`pip install -e '\.\[video\]'`"),
        # pip cannot install this one as an extra: its sweeper declares optuna<3
        ("sweep", "optuna", r"`pip install 'optuna>=4,<5'` then `pip install --no-deps 'hydra-o"),
    ],
)
def test_a_missing_extra_is_named_with_how_to_install_it(monkeypatch, extra, module, pip):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    message = rf"^it needs {module} \(.*\): the `{extra}` extra\. In a checkout: "
    message += rf"`uv sync --extra {extra}` \(.*\) or {pip}"
    with pytest.raises(ModuleNotFoundError, match=message):
        require_extra("it", (module,), extra)


def test_optuna_s_search_without_its_extra_stops_at_once_naming_it(monkeypatch, tmp_path):
    """Hydra alone would say only that it cannot find hydra/sweeper/optuna."""
    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_optuna_sweeper", None)
    expected = r"hparams_search=nms_iou_optuna needs optuna and hydra_plugins\.hydra_optuna_swe"
    with pytest.raises(AssertionError, match=expected + r"eper .*: the `sweep` extra"):
        run_script(ROOT / "train.py", ["hparams_search=nms_iou_optuna"], tmp_path)
    assert not any(tmp_path.iterdir())  # typed there: no sweep folder, no study
