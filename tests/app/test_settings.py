"""The command line's settings: `--help`, and settings refused or named before a command's task."""

import re

import pytest
from hydra import initialize_config_dir

from frcnn.app.settings import config_files, refused_keyword
from tests.app.helpers import ROOT, TINY, composed, refused, run


@pytest.mark.parametrize(
    "script, args, told",
    [
        # what Hydra's error for `draw_tresh=0.5` advises; then draw_thresh would stay 0.3
        ("predict.py", ["+draw_tresh=0.5", "input=a.jpg"], r"\+draw_tresh=0\.5: predict\.py h"),
        ("predict.py", ["++draw_tresh=0.5", "input=a.jpg"], r"\(did you mean draw_thresh=0\.5\? "),
        ("predict.py", ["+zzz=1", "input=a.jpg"], r"no setting zzz, and nothing would read it \(`"),
        ("train.py", ["+max_step=3", *TINY], r"\(did you mean trainer\.max_steps=3\? `--help` af"),
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


@pytest.mark.parametrize(
    ("setting", "told"),
    [
        # named as given, not as torch would (scaled by the batch: "Invalid learning rate: -0.5");
        # 0 too, which torch takes: a run that learns nothing (`-m lr=0,02` sweeps 0 and 2)
        ("module.optimizer.lr=0", r": ValueError: module.optimizer.lr=0: must lie in \(0, inf"),
        ("module.optimizer.momentum=-0.9", r": ValueError: module.optimizer: Invalid momentum"),
        ("module.scheduler.gamma=-1", r": ValueError: module.scheduler.gamma=-1: must lie in"),
        # Lightning does not check the types of its counts: a TypeError deep in it before
        ("trainer.max_epochs=ten", r": ValueError: trainer.max_epochs='ten': must be an integ"),
        ("trainer.gradient_clip_val=-1", r": ValueError: trainer.gradient_clip_val=-1: must li"),
        ("seed=abc", r": ValueError: seed='abc': must be an integer in \[0, 4294967295\]"),
    ],
)
def test_an_optimizer_schedule_or_trainer_setting_out_of_range_is_named(tmp_path, setting, told):
    assert re.search(told, refused("train.py", setting, *TINY, log_dir=tmp_path))


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


def test_class_names_for_data_that_names_its_classes_says_where_they_come_from(tmp_path):
    """A YOLO folder or COCO json names its classes: `+data.class_names=[a,b]` is refused with
    where they come from, not with the nearest key by spelling (`data.num_classes=[a,b]`, a
    list for a count)."""
    composed(tmp_path, "data=yolo", "data.root=x", "+data.class_names=[a,b]")
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        refused = TypeError(
            "YOLOFolder.__init__() got an unexpected keyword argument 'class_names'"
        )
        told = refused_keyword(refused)
    assert told.startswith(
        "TypeError: data.class_names=[a,b]: YOLOFolder takes no setting class_names (it names "
        "the classes itself, from the data: a data.yaml's `names`, a COCO json's `categories`"
    )
    assert "num_classes" not in told


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
    # the README's excerpt of it ("Configuration")
    readme = (ROOT / "README.md").read_text()
    excerpt = re.search(r"^uv run predict\.py --help\n```\n\n```\n(.*?)^```", readme, re.M | re.S)
    shown = [line for line in excerpt.group(1).splitlines() if line != "..."]
    assert len(shown) > 10 and not set(shown) - set(printed.splitlines())
    groups = printed.split("== Config groups")[1]
    assert re.search(r"^device  auto; or cpu, ddp, gpu$", groups, re.M)
    assert "anchors" not in groups and "train.yaml" not in printed  # not predict.py's
    assert "\nA group's settings, each with its comment: conf/<group>/<option>.yaml.\n" in groups
    printed = run("eval.py", "--help", "model=resnet50_fpn", log_dir=tmp_path).stdout
    assert printed.startswith("Evaluate a checkpoint (COCO mAP on the validation set)")
    assert "\n== conf/train.yaml, which it extends ==\n\n# uv run train.py [gr" in printed
    assert re.search(r"^model +resnet50_fpn; or resnet18_fpn$", printed, re.M)
    assert re.search(r"^experiment +none; or coco400, coco400_lsj, finetune, synth", printed, re.M)
    # the data configs' base and frcnn.fit's config, said apart: no one chooses them by name
    data = r"^data +synthetic; or coco, coco_files, hub, voc, yolo \(base: what they extend; "
    assert re.search(data + r"python: frcnn\.fit's\)$", printed, re.M)
    assert not list(tmp_path.iterdir())
    conf = ROOT / "conf"
    assert config_files(conf / "eval.yaml") == [conf / "eval.yaml", conf / "train.yaml"]
    assert config_files(tmp_path / "frcnn.conf" / "eval.yaml") == []  # (a package's config)
