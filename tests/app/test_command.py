"""What every entry point shares: its run folder and how its errors are reported."""

import re
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir

from frcnn.app.build import require_extra
from frcnn.app.command import config_files, deliberate, refused_keyword, run_dir
from frcnn.checks import check_number
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


def test_a_bad_value_is_one_message_without_traceback(tmp_path):
    printed = refused("train.py", "model.rpn.nms_thresh=2", *TINY, log_dir=tmp_path)
    assert "model.rpn.nms_thresh=2: must lie in (0, 1]" in printed


@pytest.mark.parametrize(
    "script, args, told",
    [
        # what Hydra's error for `draw_tresh=0.5` advises; then draw_thresh would stay 0.3
        ("predict.py", ["+draw_tresh=0.5", "input=a.jpg"], r"\+draw_tresh=0\.5: predict\.py h"),
        ("predict.py", ["++draw_tresh=0.5", "input=a.jpg"], r"\(did you mean draw_thresh=0\.5\? "),
        ("predict.py", ["+zzz=1", "input=a.jpg"], r"no setting zzz, and nothing would read it \(`"),
        ("train.py", ["+max_step=3", *TINY], r"\(did you mean trainer\.max_steps=3\? `--cfg job`"),
        ("train.py", ["+nms_tresh=.6", *TINY], r"model\.rpn\.nms_thresh=\.6 or model\.roi_heads\."),
    ],
)
def test_a_setting_the_command_line_adds_that_nothing_reads_is_refused(
    tmp_path, script, args, told
):
    assert re.search(told, refused(script, *args, log_dir=tmp_path))


@pytest.mark.parametrize(
    "added",
    [
        ["+input=photo.jpg"],  # a mandatory (???) setting
        ["++score_thresh=0.2", "input=photo.jpg"],  # an existing one
        ["+low=0.2", "score_thresh=${low}", "input=photo.jpg"],  # one the config refers to
        ["+low=0.2", "input=photo.jpg", "hydra.run.dir={tmp}/${low}"],  # Hydra's config does
    ],
)
def test_a_setting_the_command_line_adds_that_is_read_is_taken(tmp_path, added):
    """predict.py then goes on to look for its input (not there: the run stops there)."""
    with pytest.raises(AssertionError, match="FileNotFoundError: input='photo.jpg': no image"):
        run("predict.py", *(a.replace("{tmp}", str(tmp_path)) for a in added), log_dir=tmp_path)


@pytest.mark.parametrize(
    "added, told",
    [
        # what Hydra's error for `trainer.max_epoch=3` advises; then the Trainer's TypeError
        ("+trainer.max_epoch=3", r": TypeError: trainer\.max_epoch=3: Trainer takes no setting"),
        ("+model.rpn.nms_tresh=.6", r"RPN takes no setting nms_tresh \(did you mean model\.rpn\.n"),
        ("++module.optimizer.lrr=.1", r"\(did you mean module\.optimizer\.lr=\.1\? `--cfg job`"),
    ],
)
def test_a_nested_setting_the_command_line_adds_that_its_object_refuses_is_named(
    tmp_path, added, told
):
    assert re.search(told, refused("train.py", added, *TINY, log_dir=tmp_path))


def test_only_a_keyword_that_the_command_line_added_is_named(tmp_path):
    """A constructor's TypeError for a keyword that no override added is a bug: its traceback
    is kept (None here)."""
    composed(tmp_path, "+trainer.max_epoch=3")
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):  # (for its compose)
        bug = TypeError("Trainer.__init__() got an unexpected keyword argument 'min_epoch'")
        assert refused_keyword(bug) is None
        wrapped = RuntimeError("Error in call to target 'lightning.Trainer'")  # as Hydra does
        wrapped.__cause__ = TypeError(str(bug).replace("min_epoch", "max_epoch"))
        assert refused_keyword(wrapped).startswith(
            "TypeError: trainer.max_epoch=3: Trainer takes no setting max_epoch (did you mean "
            "trainer.max_epochs=3? "
        )


@pytest.mark.parametrize(
    "script, args, told",
    [
        (
            "predict.py",
            [],
            r"predict: ValueError: input is not set: give it, input=\.\.\. \(`--help`",
        ),
        (
            "export.py",
            [],
            r"export: ValueError: ckpt_path is not set: give it, ckpt_path=\.\.\. \(",
        ),
        ("train.py", ["data=yolo"], r"train: ValueError: data\.root is not set: give it, data\.ro"),
    ],
)
def test_a_mandatory_setting_not_given_is_named(tmp_path, script, args, told):
    """(Else OmegaConf's MissingMandatoryValue, with a traceback, where the command reads it.)"""
    assert re.search(told, refused(script, *args, log_dir=tmp_path))


def test_help_tells_what_the_command_does_its_settings_and_its_groups_options(tmp_path):
    """`--help`: the entry point's docstring, its config file with the comments (and the file
    it extends), and the options of the config groups it chooses from, with the command line's
    choices; nothing run, nothing written."""
    printed = run("predict.py", "--help", log_dir=tmp_path).stdout
    assert printed.startswith("Run a checkpoint on images: annotated copies and one COCO-format")
    assert "\nuv run predict.py ckpt_path=... input=clip.mp4 stride=2\n" in printed
    assert (
        "\n== Settings (key=value; nested: a.b=value): conf/predict.yaml ==\n\n# uv run" in printed
    )
    assert "\ninput: ???  # an image, a folder of images, a glob, or a video file" in printed
    assert "\noutput: ${paths.output_dir}/predictions\n" in printed  # as written
    groups = printed.split("== Config groups")[1]
    assert re.search(r"^device  auto; or cpu, ddp, gpu$", groups, re.M)
    assert "anchors" not in groups and "train.yaml" not in printed  # not predict.py's
    printed = run("eval.py", "--help", "model=resnet50_fpn", log_dir=tmp_path).stdout
    assert printed.startswith("Evaluate a checkpoint (COCO mAP on the validation set)")
    assert "\n== conf/train.yaml, which it extends ==\n\n# uv run train.py [gr" in printed
    assert re.search(r"^model +resnet50_fpn; or resnet18_fpn$", printed, re.M)
    assert re.search(r"^experiment +none; or coco400, coco400_lsj, finetune, synth", printed, re.M)
    assert not list(tmp_path.iterdir())
    conf = ROOT / "conf"
    assert config_files(conf / "eval.yaml") == [conf / "eval.yaml", conf / "train.yaml"]
    assert config_files(tmp_path / "frcnn.conf" / "eval.yaml") == []  # (a package's config)


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
    start = datetime.now()
    taken = [
        runs / (start + timedelta(seconds=s)).strftime("%Y-%m-%d_%H-%M-%S") for s in range(120)
    ]
    for folder in taken:
        folder.mkdir(parents=True)
        (folder / "other_run.txt").write_text("")
    run("train.py", "trainer.max_epochs=1", *TINY, log_dir=tmp_path)
    (mine,) = [path for path in runs.iterdir() if path not in taken]
    assert mine.name.endswith("_1") and Path(mine.name.removesuffix("_1")) in {
        Path(t.name) for t in taken
    }
    assert (mine / ".hydra" / "config.yaml").is_file() and (mine / "metrics.json").is_file()
    assert (mine / "checkpoints" / "last.ckpt").is_file()
    assert all([p.name for p in folder.iterdir()] == ["other_run.txt"] for folder in taken)


def test_a_failed_run_of_a_sweep_is_recorded_and_the_others_run(tmp_path):
    """LR 100 explodes (held finite by gradient clipping, stopped by the divergence rule); LR
    0.02 trains."""
    grid = ["-m", "module.optimizer.lr=100,0.02", "callbacks.divergence.window=2"]
    try:
        run("train.py", *grid, "trainer.max_epochs=2", *TINY, log_dir=tmp_path)
    except AssertionError as error:
        printed = str(error)
    assert "train.py failed (1)" in printed  # the sweep's status says that a run failed
    assert "1 of 2 runs failed" in printed
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
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
    from tests.app.helpers import composed

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
