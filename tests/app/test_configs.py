"""Every config option composes and instantiates."""

import logging
import os
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from frcnn.app.build import SLOW_BFLOAT16, build_trainer, check_trainer, cpu_has_bfloat16
from frcnn.app.command import deliberate
from frcnn.inference.predictor import Predictor
from frcnn.model import FasterRCNN
from frcnn.training.module import DetectorModule
from tests.app.helpers import ROOT, composed, run_script

CONF = Path(__file__).parents[2] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def build_all(cfg):
    """Instantiate the data module (without loading data), model, module, callbacks, loggers.
    Where the class count comes from the data's files (data.num_classes null), 3 stands in."""
    if cfg.data.num_classes is None:
        cfg.data.num_classes = 3
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    module = instantiate(cfg.module)(model=model)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    return datamodule, model, module, callbacks, loggers


OFFLINE = ["model.backbone.weights=null"]  # no ImageNet download in the tests


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize(
    ("group", "option"),
    [
        pytest.param(g, o, marks=GPU) if (g, o) == ("device", "gpu") else (g, o)
        for g in (
            "data",
            "model",
            "anchors",
            "frozen",
            "precision",
            "device",
            "logger",
            "callbacks",
        )
        for o in options(g)
    ],
)
def test_every_group_option_instantiates(tmp_path, group, option):
    folder = ["data.root=/data/mine"] if option in ("yolo", "voc") else []  # a folder of one's own
    if option == "base":  # sources of one's own, on the command line
        folder = [f"data.{split}._target_=frcnn.data.SyntheticShapes" for split in ("train", "val")]
    cfg = composed(tmp_path, f"{group}={option}", *folder, *OFFLINE)
    datamodule, model, module, _, _ = build_all(cfg)
    assert isinstance(model, FasterRCNN) and isinstance(module, DetectorModule)
    if group in ("precision", "device"):  # the trainer, as the run builds it
        from frcnn.app.build import build_trainer

        trainer = build_trainer(cfg)
        if group == "precision":  # a CPU has no float16 autocast: Lightning takes bfloat16
            on_cpu = {"16-mixed": "bf16-mixed"} if not torch.cuda.is_available() else {}
            assert trainer.precision == on_cpu.get(option, option)
        else:
            strategy = type(trainer.strategy).__name__
            assert (strategy == "DDPStrategy") == (option == "ddp"), strategy
            assert (trainer.accelerator.__class__.__name__ == "CUDAAccelerator") == (
                option == "gpu" or (option in ("auto", "ddp") and torch.cuda.is_available())
            )
    else:
        instantiate(cfg.trainer, accelerator="cpu", devices=1, strategy="auto")


@pytest.mark.parametrize("has_bfloat16", [True, False])
def test_bfloat16_on_a_cpu_without_its_instructions_is_said_to_be_slow(
    tmp_path, monkeypatch, caplog, has_bfloat16
):
    """bf16-mixed on a CPU that lacks them warns (and 16-mixed, the coco400 recipe's, which
    Lightning runs as bf16-mixed there); float32 does not, nor a CPU that has them."""
    build_module = sys.modules[build_trainer.__module__]  # (frcnn.app.build is also a function)
    monkeypatch.setattr(build_module, "cpu_has_bfloat16", lambda: has_bfloat16)
    for precision in ("bf16-mixed", "16-mixed", "32-true"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, "frcnn.app.build"):
            build_trainer(composed(tmp_path, f"precision={precision}", "device=cpu", *OFFLINE))
        warned = SLOW_BFLOAT16 in caplog.text
        assert warned == (precision != "32-true" and not has_bfloat16), (precision, caplog.text)


def test_a_torch_without_the_bfloat16_probe_warns_of_nothing(monkeypatch):
    """cpu_has_bfloat16 asks a private op of torch's: where a torch has none, no warning."""
    monkeypatch.setattr(torch.ops, "mkldnn", types.SimpleNamespace())
    assert cpu_has_bfloat16() is True


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_instantiates(tmp_path, experiment):
    cfg = composed(tmp_path, f"experiment={experiment}", *OFFLINE)
    _, model, _, _, _ = build_all(cfg)
    assert model.roi_heads.num_classes == cfg.data.num_classes


def test_coco400_is_the_documented_setting(tmp_path):
    cfg = composed(tmp_path, "experiment=coco400", *OFFLINE)
    assert cfg.trainer.precision == "16-mixed" and cfg.trainer.accelerator == "gpu"
    assert cfg.data.image_size == 400 and cfg.data.train._target_ == "frcnn.data.HubCOCO"
    model = instantiate(cfg.model)
    assert model.rpn.nms_calls == model.roi_heads.nms_calls == "triton"  # the H200's fastest
    assert model.backbone.num_frozen == 4  # stem, layer1, layer2, layer3
    assert (
        sum(
            len(a)
            for a in model.anchor_generator(
                [(100, 100), (50, 50), (25, 25), (13, 13), (7, 7)], "cpu"
            )
        )
        == 40029
    )


def test_coco400_fails_fast_and_checkpoints_often(tmp_path):
    cfg = composed(tmp_path, "experiment=coco400", *OFFLINE)
    assert cfg.trainer.num_sanity_val_steps == 2  # validation runs in the first minute
    assert cfg.callbacks.last_checkpoint.every_n_train_steps == 1000
    assert cfg.data.train.seed == cfg.seed  # the run's seed drives the shuffle


@GPU
def test_the_coco400_recipe_builds_its_trainer_on_a_gpu(tmp_path):
    from frcnn.app.build import build_trainer

    cfg = composed(tmp_path, "experiment=coco400", *OFFLINE)
    trainer = build_trainer(cfg)
    assert trainer.precision == "16-mixed"
    assert type(trainer.accelerator).__name__ == "CUDAAccelerator"


@pytest.mark.filterwarnings("ignore:GPU available but not used")
def test_device_auto_is_a_cuda_gpu_or_the_cpu_even_beside_apple_s_mps(
    tmp_path, monkeypatch, caplog
):
    """Lightning's own `auto` takes MPS first (an Apple Silicon Mac), where the NMS's float64
    cannot run; `device=auto` means what the Predictor's does."""
    from lightning.fabric.accelerators.mps import MPSAccelerator

    monkeypatch.setattr(MPSAccelerator, "is_available", staticmethod(lambda: True))
    caplog.set_level("INFO", logger="frcnn")
    trainer = build_trainer(composed(tmp_path, "device=auto", *OFFLINE))
    expected = "CUDAAccelerator" if torch.cuda.is_available() else "CPUAccelerator"
    assert type(trainer.accelerator).__name__ == expected
    if not torch.cuda.is_available():
        assert "device=auto: Apple's MPS is not used (it has no float64)" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize(
    ("script", "overrides"),
    [("train.py", ["experiment=coco400"]), ("eval.py", ["ckpt_path=x.ckpt", "device=gpu"])],
)
def test_a_gpu_asked_for_where_there_is_none_is_named_before_anything_loads(
    tmp_path, script, overrides
):
    """(experiment=coco400 chooses device=gpu; its hub data and x.ckpt are not read first.)
    Lightning said only "No supported gpu backend found!"."""
    message = r": ValueError: device=gpu: torch .* finds no usable CUDA GPU here; device=cpu runs"
    with pytest.raises(AssertionError, match=message):
        run_script(ROOT / script, overrides, tmp_path)  # typed there, on the default paths
    with pytest.raises(ValueError, match=r"^device=cuda:1: torch .* no usable CUDA GPU"):
        Predictor(FasterRCNN(num_classes=2), 64, device="cuda:1")  # the Python door


def test_every_threshold_is_a_config_value(tmp_path):
    cfg = composed(
        tmp_path,
        "model.rpn.nms_thresh=0.6",
        "model.roi_heads.fg_iou_thresh=0.6",
        "model.roi_heads.score_thresh=0.01",
    )
    model = instantiate(cfg.model)
    assert model.rpn.nms_thresh == 0.6
    assert model.roi_heads.sampling.fg_iou_thresh == 0.6
    assert model.roi_heads.score_thresh == 0.01


def test_hparams_search_grid_trains_something_different_in_every_run(tmp_path):
    cfg = composed(tmp_path, "hparams_search=nms_iou")
    params = {k: [float(v) for v in str(p).split(",")] for k, p in cfg.hydra.sweeper.params.items()}
    assert "model.roi_heads.nms_thresh" not in params  # post-processing: the eval.py sweep
    fg, bg = params["model.roi_heads.fg_iou_thresh"], params["model.roi_heads.bg_iou_thresh"]
    runs = [(nms, f, b) for nms in params["model.rpn.nms_thresh"] for f in fg for b in bg]
    # IoU >= fg is foreground, < bg background: (fg, bg) pairs with fg >= bg all differ
    assert all(f >= b for _, f, b in runs) and len(set(runs)) == len(runs) == 12
    for f, b in {(f, b) for _, f, b in runs}:
        overrides = [f"model.roi_heads.fg_iou_thresh={f}", f"model.roi_heads.bg_iou_thresh={b}"]
        instantiate(composed(tmp_path, *overrides).model)


@pytest.mark.parametrize("stage", ["rpn", "roi_heads"])
def test_foreground_threshold_below_background_fails_at_start_up(tmp_path, stage):
    cfg = composed(tmp_path, f"model.{stage}.fg_iou_thresh=0.2", f"model.{stage}.bg_iou_thresh=0.3")
    with pytest.raises(InstantiationException, match=f"model.{stage}.fg_iou_thresh=0.2 < "):
        instantiate(cfg.model)


def test_wrong_num_classes_fails_at_start_up_naming_the_key(tmp_path):
    cfg = composed(tmp_path, "data.num_classes=5", "data.train.num_classes=4")
    datamodule = instantiate(cfg.data)
    with pytest.raises(ValueError, match="data.num_classes=5"):
        datamodule.setup("fit")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=abc", r"data.batch_size='abc': must be an integer in \[1, inf\)"),
        ("data.num_workers=-1", r"data.num_workers=-1: must lie in \[0, inf\)"),
        ("model.rpn.nms_thresh=2", r"model.rpn.nms_thresh=2: must lie in \(0, 1\]"),
        ("model.roi_heads.nms_thresh=0", r"model.roi_heads.nms_thresh=0: must lie in \(0, 1\]"),
        # (a detection scores above it: at 1, none would)
        ("model.roi_heads.score_thresh=1", r"score_thresh=1: must lie in \[0, 1\)"),
        ("model.rpn.fg_iou_thresh=1.2", r"model.rpn.fg_iou_thresh=1.2: must lie in \[0, 1\]"),
        ("model.rpn.post_nms_top_n_train=0", r"post_nms_top_n_train=0: must lie in \[1, inf\)"),
        ("model.roi_heads.positive_fraction=0", r"positive_fraction=0: must lie in \(0, 1\]"),
        ("model.roi_heads.detections_per_img=2.5", "detections_per_img=2.5: must be an integer"),
        ("model.rpn.min_size=-1", r"model.rpn.min_size=-1: must lie in \[0, inf\)"),
        ("model.anchors.sizes=[[0],[32],[64],[128],[256]]", r"anchors.sizes\[0\]=0: must lie in"),
        ("model.fpn_channels=0", r"model.fpn_channels=0: must lie in \[1, inf\)"),
        # a size per level as torchvision writes it, flat: a TypeError before
        (
            "model.anchors.sizes=[32,64,128,256,512]",
            r"sizes=\[32, 64, 128, 256, 512\]: a list of "
            r"numbers per FPN level, e.g. model.anchors.sizes=\[\[32\],\[64\],\[128\],\[256\],",
        ),
        (
            "model.anchors.strides=[[4],[8],[16],[32],[64]]",
            r"a number per FPN level, e.g. model."
            r"anchors.strides=\[4,8,16,32,64\]",
        ),
        # each of these failed with a traceback only in the first step, or ran as another value
        ("model.backbone.norm_eps=-1", r"model.backbone.norm_eps=-1: must lie in \[0, inf\)"),
        ("model.backbone.norm_eps=0", r"norm_eps=0: trained BatchNorm \(model.backbone.norm=bn"),
        ("model.rpn.box_coder_weights=[1,1]", r"rpn.box_coder_weights=\[1, 1\]: give four pos"),
        ("model.roi_heads.box_coder_weights=[10,10,0,5]", r"weights=\[10, 10, 0, 5\]: give"),
        ("model.rpn.smooth_l1_beta=-1", r"model.rpn.smooth_l1_beta=-1: must lie in \[0, inf\)"),
        ("model.roi_heads.canonical_size=0", r"canonical_size=0: must lie in \(0, inf\)"),
        ("module.compile=no", r"module.compile='no': true \(inductor\), false or a torch.compile"),
        # a word Hydra reads as a string: Python took it as true
        ("model.backbone.checkpointing=no", r"checkpointing='no': must be true or false"),
        ("module.per_class_map=maybe", r"module.per_class_map='maybe': must be true or false"),
        ("module.channels_last=1", r"module.channels_last=1: must be true or false"),
        ("data.pin_memory=off", r"data.pin_memory='off': must be true or false"),
        ("data.persistent_workers=no", r"data.persistent_workers='no': must be true or false"),
    ],
)
def test_an_impossible_value_fails_at_start_up_naming_the_key_and_range(
    tmp_path, override, message
):
    cfg = composed(tmp_path, override, *OFFLINE)
    with pytest.raises((InstantiationException, ValueError), match=message):
        build_all(cfg)


def test_an_unknown_frozen_stage_is_refused_without_the_warning_about_random_stages(
    tmp_path, caplog
):
    from frcnn.app.build import warn_frozen_random

    cfg = composed(tmp_path, "model.backbone.frozen=layer9", *OFFLINE)
    warn_frozen_random(cfg.model.backbone)
    assert "keeps the backbone's stages" not in caplog.text
    with pytest.raises(
        InstantiationException,
        match=r"model.backbone.frozen='layer9': one of none, stem, layer1, layer2, layer3, layer4",
    ):
        instantiate(cfg.model)
    warn_frozen_random(composed(tmp_path, "frozen=layer2", *OFFLINE).model.backbone)
    assert "frozen=layer2 keeps the backbone's stages up to layer2" in caplog.text


EARLY_STOP_ON_A_CLASS = [
    "callbacks=early_stopping",
    "callbacks.early_stopping.monitor='val/ap/green ellipse'",
]


def run_config(tmp_path, *overrides) -> DictConfig:
    """A training run's config as @hydra.main hands it to the task, for `build`."""
    from omegaconf import open_dict

    cfg = composed(tmp_path, "data.num_workers=0", "device=cpu", *OFFLINE, *overrides)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["callbacks.model_checkpoint.monitor=val/mAP"], r"model_checkpoint.monitor=val/mAP: the "
         r"run logs no such metric \(did you mean val/map\?\); it logs epoch, step, train/"),
        (["optimized_metric=map50"], r"optimized_metric=map50: .* \(did you mean val/map_50\?\)"),
        # a class's AP is logged with module.per_class_map=true alone
        (EARLY_STOP_ON_A_CLASS, r"early_stopping.monitor=val/ap/green ellipse: the run logs"),
        # a figure sought the wrong way: the best checkpoint the worst, an early stop at the best
        (["callbacks.model_checkpoint.monitor=val/loss"], r"callbacks.model_checkpoint.mode=max "
         r"seeks the highest val/loss, the worst: callbacks.model_checkpoint.mode=min$"),
        (["hparams_search=nms_iou_optuna", "hydra.sweeper.direction=minimize"],
         r"direction=minimize seeks the lowest val/map_50, the worst: hydra.sweeper.direction=max"),
        (["+callbacks.es._target_=lightning.pytorch.callbacks.EarlyStopping",
          "+callbacks.es.monitor=val/map_50"],  # Lightning's default mode: "min"
         r"callbacks.es.mode=min seeks the lowest val/map_50, the worst: callbacks.es.mode=max"),
        # 0 ran as null, the LR unscaled
        (["lr_base_batch=0"], r"lr_base_batch=0: must lie in \[1, inf\)"),
        # passed over on a CPU, a traceback on a GPU
        (["float32_matmul_precision=fast"], "float32_matmul_precision='fast': one of highest,"),
        (["init_weights=5"], r"init_weights=5: Hydra read a number, not a path"),
        (["model.backbone.weights=5"], r"model.backbone.weights=5: Hydra read a number, not"),
        # found at the end of the first epoch before; a fall of val/map counted as a rise
        (["callbacks=inspection", "callbacks.inspection.what=[objectnes]"],
         r"callbacks.inspection.what=\[objectnes\]: give a list of one or more of anchors,"),
        (["callbacks=early_stopping", "callbacks.early_stopping.min_delta=-0.01"],
         r"callbacks.early_stopping.min_delta=-0.01: must lie in \[0, inf\)"),
        # the data module made it a tuple first: a TypeError
        (["data.scale_jitter=0.5"], r"data.scale_jitter=0.5: must be \[low, high\] with 0 <"),
        # Lightning's loggers take any value: os.path.join's TypeError, a string taken as true
        (["logger=csv", "logger.csv.name=5"], r"logger.csv.name=5: Hydra read a number, not a"),
        (["logger.tensorboard.default_hp_metric=no"], r"default_hp_metric='no': must be true or"),
    ],
)  # fmt: skip
def test_a_run_setting_fails_at_start_up_naming_the_key(tmp_path, overrides, message):
    """A metric that is monitored but not logged: Lightning failed at the end of the first
    epoch (unsaved) with a traceback; a sweeper was told None. Each is a message the commands
    print alone (`deliberate`), a constructor's through Hydra's InstantiationException."""
    from frcnn.app import build

    cfg = run_config(tmp_path, *overrides)
    with pytest.raises((ValueError, InstantiationException)) as refused:
        build(cfg)
    assert re.search(message, deliberate(refused.value) or ""), refused.value
    if overrides == EARLY_STOP_ON_A_CLASS:
        cfg.module.per_class_map = True
        assert build(cfg)[1].metric_names() >= {"val/ap/green ellipse", "val/map", "train/loss"}


@pytest.mark.parametrize(
    ("key", "value", "told"),
    [
        # Lightning takes any value: these words Hydra reads as strings it took as true
        ("deterministic", "no", "trainer.deterministic='no': must be true, false, null or warn"),
        ("enable_progress_bar", "off", "trainer.enable_progress_bar='off': must be true, false"),
        ("sync_batchnorm", 1, "trainer.sync_batchnorm=1: must be true or false"),
        ("max_epochs", "ten", "trainer.max_epochs='ten': must be an integer in [-1, inf)"),
        # 0 failed at the first step (a ZeroDivisionError in Lightning), 0.0 validated every step
        ("val_check_interval", 0, "trainer.val_check_interval=0: validate every N steps (an int"),
        ("val_check_interval", 0.0, "trainer.val_check_interval=0.0: validate every N steps"),
    ],
)
def test_a_trainer_setting_of_the_wrong_kind_or_range_is_refused_naming_it(key, value, told):
    with pytest.raises(ValueError, match=re.escape(told)):
        check_trainer(OmegaConf.create({key: value}))


def test_the_trainer_switches_take_lightnings_own_values():
    check_trainer(OmegaConf.create({"deterministic": "warn", "benchmark": None, "barebones": True}))
    for every in (1, 0.25, 1.0, "00:12:00:00", None):
        check_trainer(OmegaConf.create({"val_check_interval": every}))


def test_the_learning_rate_scales_with_the_batch_and_is_printed(tmp_path, caplog):
    from frcnn.app import build

    caplog.set_level("INFO", logger="frcnn")

    def module_of(*overrides):
        return build(run_config(tmp_path, "data.batch_size=4", *overrides))[1]

    assert module_of().optimizer_factory.keywords["lr"] == pytest.approx(0.02 * 4 / 16)
    assert "Learning rate 0.005 = 0.02 x batch 4 / 16" in caplog.text
    assert module_of("lr_base_batch=null").optimizer_factory.keywords["lr"] == 0.02


@pytest.mark.parametrize("choice", ["debug=fdr", "callbacks=none"])
def test_coco400_without_its_callbacks_builds_a_trainer(tmp_path, choice):
    """coco400 sets callbacks.last_checkpoint.every_n_train_steps; a choice without that
    callback leaves the setting alone, which is no callback to build."""
    from frcnn.app.build import build_trainer

    cfg = composed(tmp_path, "experiment=coco400", choice, "device=cpu")
    assert "_target_" not in cfg.callbacks.last_checkpoint
    trainer = build_trainer(cfg)
    assert not any(type(c).__name__ == "LastCheckpoint" for c in trainer.callbacks)


@pytest.mark.parametrize("choice", ["callbacks=default", "callbacks=none", "debug=fdr"])
def test_every_callbacks_choice_shows_the_projects_progress_bar_or_none_when_asked(
    tmp_path, choice
):
    """callbacks=none and debug=fdr choose no bar: Lightning's own would show each figure
    twice (`train/loss_step`, `train/loss_epoch`). At enable_progress_bar=false, Lightning
    refuses a bar callback: the default's is left out."""
    from frcnn.app.build import build_trainer
    from frcnn.training.callbacks import ProgressBar

    trainer = build_trainer(composed(tmp_path, choice, "device=cpu"))
    assert type(trainer.progress_bar_callback) is ProgressBar
    off = composed(tmp_path, choice, "device=cpu", "trainer.enable_progress_bar=false")
    assert build_trainer(off).progress_bar_callback is None


def test_a_run_shorter_than_its_logging_interval_logs_ten_times(tmp_path, caplog):
    """A smoke test of the recipe, counted in steps (the epoch-counted case: `trained`)."""
    from frcnn.app.build import build_trainer
    from frcnn.training.module import fit_logging_interval

    cfg = composed(tmp_path, "experiment=coco400", "device=cpu", "trainer.max_steps=30")
    trainer = build_trainer(cfg)
    fit_logging_interval(trainer)
    assert trainer.log_every_n_steps == 3
    assert "trainer.log_every_n_steps=50 is more than the run's 30 steps" in caplog.text
    trainer = build_trainer(composed(tmp_path, "experiment=coco400", "device=cpu"))
    fit_logging_interval(trainer)
    assert trainer.log_every_n_steps == 50


def test_a_model_for_another_number_of_classes_than_the_data_is_refused(tmp_path):
    from frcnn.app import build

    cfg = composed(tmp_path, "model.num_classes=5", "data.num_workers=0", "device=cpu")
    with pytest.raises(ValueError, match=r"model.num_classes=5, but the data has 6 classes"):
        build(cfg)


def test_the_slurm_launcher_asks_for_one_task_per_gpu_and_a_signal_before_the_limit(
    tmp_path, monkeypatch
):
    """`hydra/launcher=slurm`: the sbatch file that submitit writes for a trial of 4 GPUs
    (made as hydra-submitit-launcher makes it, without a cluster: an `srun` that is never run
    only passes submitit's check for one)."""
    import submitit
    from omegaconf import OmegaConf

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    cfg = composed(
        tmp_path, "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
        "hydra.launcher.gpus_per_node=4", "device=ddp", "trainer.devices=4",
    )  # fmt: skip
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_").endswith("SlurmLauncher")
    executor = submitit.AutoExecutor(
        folder=tmp_path, cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    params.pop("submitit_folder")
    base = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes",
            "name", "stderr_to_stdout"}  # fmt: skip
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    sbatch = executor._executor._make_submission_file_text("python -m train", "uid")
    for line in ["--partition=gpu", "--gpus-per-node=4", "--ntasks-per-node=4", "--nodes=1",
                 "--cpus-per-task=8", "--time=1440", "--signal=USR2@120"]:  # fmt: skip
        assert f"#SBATCH {line}\n" in sbatch, (line, sbatch)
    assert executor._executor.max_num_timeout == 10


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("report=yes", r"report='yes': must be true, false or auto"),
        ("report_score_threshold=5", r"report_score_threshold=5: must lie in \[0, 1\]"),
    ],
)
def test_a_wrong_report_setting_fails_when_the_trainer_is_built(tmp_path, override, message):
    """Before any training, not when the report is due at the end of the run."""
    cfg = composed(tmp_path, override, "device=cpu", *OFFLINE)
    with pytest.raises(ValueError, match=message):
        build_trainer(cfg)


@pytest.mark.parametrize("data", [o for o in options("data") if o not in ("base", "python")])
def test_finetune_composes_with_every_data_config(tmp_path, data):
    """experiment=finetune sets the recipe and leaves the data what `data=` chose."""
    folder = ["data.root=/data/mine"] if data in ("yolo", "voc") else []
    alone = composed(tmp_path, f"data={data}", *folder)
    cfg = composed(tmp_path, "experiment=finetune", f"data={data}", *folder)
    assert cfg.data == alone.data and cfg.init_weights == "coco"
    assert (cfg.model.backbone.depth, cfg.model.backbone.frozen, cfg.trainer.max_epochs) == (
        50, "layer1", 24,
    )  # fmt: skip
    assert cfg.trainer.check_val_every_n_epoch == 1 and cfg.module.scheduler.warmup_steps < 1


@pytest.mark.parametrize("choice", ["debug=fdr", "debug=overfit", "debug=profiler"])
def test_debug_runs_have_a_folder_of_their_own(tmp_path, choice):
    assert composed(tmp_path, choice).task_name == "debug"
    assert composed(tmp_path).task_name == "train"
