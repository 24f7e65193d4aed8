"""The entry points end to end: train, resume, evaluate, sweep, DDP."""

import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from frcnn.data import HubCOCO, Transform
from tests.app.helpers import (
    ROOT,
    SMALL,
    SMALL_MODEL,
    TINY,
    coco_json_folder,
    metrics,
    process_env,
    run,
    run_dirs,
)
from tests.data.conftest import hub_row, write_hub_parquet


def test_two_epochs_write_checkpoints_and_tensorboard_logs(trained):
    _, run_dir = trained
    checkpoints = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and any(
        n.startswith("epoch00") and "-map" in n for n in checkpoints
    )
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("rpn_cls", "rpn_box", "roi_cls", "roi_box", "loss"):
        assert f"train/{tag}_step" in scalars and f"train/{tag}_epoch" in scalars
    assert {"val/map", "val/map_50", "val/mar_100", "val/loss"} <= scalars
    assert {"train/images_per_s_step", "train/images_per_s_epoch"} <= scalars
    assert any(tag.startswith("lr-") for tag in scalars)
    assert [e.step for e in events.Scalars("train/loss_step")] == list(range(8))
    assert (
        "log_every_n_steps=10 is more than the run's 8 steps" in (run_dir / "train.log").read_text()
    )
    images = set(events.Tags()["images"])
    pictures = {"val/detections", "inspect/objectness", "inspect/proposals", "inspect/assignments"}
    assert pictures | {"train/labels"} <= images
    assert len(events.Images("train/labels")) == 1  # the first training batch, once
    assert len(events.Scalars("val/map")) == 2  # one per epoch
    assert 0.0 <= metrics(run_dir)["val/map"] <= 1.0
    curves = {"pr/0.5/all", "pr/0.75/all", "pr/0.5:0.95/all"}
    assert curves <= set(events.Tags()["tensors"])  # the PR curves tab, every validation
    assert len(events.Tensors("pr/0.5/all")) == 2
    report = run_dir / "report"
    index = (report / "index.md").read_text()
    for name in REPORT_FILES:
        assert (report / name).stat().st_size > 0, name
        assert name.endswith(".csv") or f"({name})" in index, name


def test_hparams_show_the_runs_settings_and_final_metrics_without_cards_of_their_own(trained):
    """TensorBoard's HParams tab: the run's seed, group choices and command-line settings, then
    the final metrics, read from a run of their own (`final/`) under the curves' names, so the
    Scalars tab gets no single-point `hp/*` cards; `hparams.yaml` keeps the whole config."""
    _, run_dir = trained
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert not [t for t in events.Tags()["scalars"] if t.startswith("hp")]
    final = EventAccumulator(str(run_dir / "tensorboard" / "final")).Reload()
    hparams = final.PluginTagToContent("hparams")
    experiment = HParamsPluginData.FromString(hparams["_hparams_/experiment"]).experiment
    shown = [info.name for info in experiment.hparam_infos]
    assert shown[:3] == ["seed", "data", "model"]
    assert {"ema", "callbacks", "trainer.max_epochs", "data.image_size"} <= set(shown)
    assert len(shown) < 40  # not the hundred-odd keys of the whole config
    session = HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    assert session.session_start_info.hparams["trainer.max_epochs"].number_value == 2
    assert session.session_start_info.hparams["ema"].string_value == "on"
    names = [info.name.tag for info in experiment.metric_infos]
    assert "val/map" in names and not [n for n in names if not n.startswith("val/")]
    for name in names:  # each metric's value is where the HParams tab looks for it
        (point,) = final.Scalars(name)
        assert point.value == pytest.approx(metrics(run_dir)[name], nan_ok=True)
    saved = yaml.safe_load((run_dir / "tensorboard" / "hparams.yaml").read_text())
    assert saved["module"]["optimizer"]["lr"] and saved["data"]["train"]["num_images"] == 16


REPORT_FILES = (
    "per_class.csv",
    "pr_curves.png",
    "pr_curves.csv",
    "confusion_matrix.png",
    "confusion_matrix_normalised.png",
    "confusion_matrix.csv",
    "errors.png",
    "errors.csv",
    "dataset.png",
)


def test_resuming_goes_on_in_the_runs_folder_and_keeps_its_best(tmp_path):
    """Resumed with last.ckpt written every 3 steps as well (a user who would lose fewer steps
    to the next crash): Lightning restores none of that callback's state, and the run still
    writes over last.ckpt (a last-v1.ckpt beside it would leave the next resume at step 8)."""
    log_dir = tmp_path / "logs"
    run("train.py", "trainer.max_epochs=2", *TINY, log_dir=log_dir)
    (run_dir,) = run_dirs(log_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    every_3_steps = "callbacks.last_checkpoint.every_n_train_steps=3"
    result = run(
        "train.py", "trainer.max_epochs=4", f"ckpt_path={last}", every_3_steps, *TINY,
        log_dir=log_dir,
    )  # fmt: skip
    assert run_dirs(log_dir) == [run_dir]  # no new folder
    assert [p.name for p in (run_dir / "checkpoints").glob("last*")] == ["last.ckpt"]
    assert torch.load(last, weights_only=True)["global_step"] == 16
    assert "Resuming in" in result.stdout + result.stderr
    # twice the steps: the schedule laid over 16 moves its milestones (steps 5 and 7 of 8)
    assert "Resumed into a run of 16 steps, not the length" in result.stdout + result.stderr
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    steps = [e.step for e in events.Scalars("train/loss_step")]
    assert len(steps) == len(set(steps)) == 16 and max(steps) == 15  # 8 steps more, in order
    maps = [e.value for e in events.Scalars("val/map")]
    assert len(maps) == 4
    # the best of all four validations, the two before the interruption included
    (best,) = (run_dir / "checkpoints").glob("epoch*-map*.ckpt")
    assert best.name == f"epoch{maps.index(max(maps)):03d}-map{max(maps):.4f}.ckpt"


def best_checkpoint(run_dir):
    return next((run_dir / "checkpoints").glob("epoch*-map*.ckpt"))


def test_eval_reproduces_the_logged_val_map(trained):
    """The run's final figures are its best checkpoint's: eval.py gives them again (from the
    weights' moving average, which the run validated)."""
    log_dir, run_dir = trained
    checkpoint = torch.load(best_checkpoint(run_dir), weights_only=True)
    assert checkpoint["weights"] == "ema" and "current_model_state" in checkpoint
    run("eval.py", f"ckpt_path={best_checkpoint(run_dir)}", *TINY, "report=auto", log_dir=log_dir)
    evaluated = run_dirs(log_dir, "eval")[0]
    assert metrics(evaluated)["val/map"] == pytest.approx(metrics(run_dir)["val/map"], abs=1e-6)
    assert metrics(evaluated)["val/map_50"] == pytest.approx(
        metrics(run_dir)["val/map_50"], abs=1e-6
    )
    # the same report of the same checkpoint on the same images
    for name in ("per_class.csv", "confusion_matrix.csv", "errors.csv", "dataset.md"):
        assert (evaluated / "report" / name).read_text() == (run_dir / "report" / name).read_text()


def write_parquet(path, first_id, count):
    rows = [
        hub_row(i, 120, 90, [[10.0, 10.0, 60.0, 50.0]], [i % 3])
        for i in range(first_id, first_id + count)
    ]
    write_hub_parquet(path, rows)


def test_the_summary_names_the_tensorboard_folder_that_was_written(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    result = run(
        "train.py",
        "trainer.max_epochs=1",
        "callbacks=none",
        f"hydra.run.dir={elsewhere}",
        *TINY,
        log_dir=tmp_path / "logs",
    )
    output = result.stdout + result.stderr
    assert f"uv run tensorboard --logdir {elsewhere / 'tensorboard'}" in output
    assert list((elsewhere / "tensorboard").glob("events.out.tfevents.*"))


def test_a_run_resumed_mid_epoch_continues_that_epochs_stream(tmp_path):
    """Lightning's own resume from a mid-epoch last.ckpt of a shuffled hub stream: the
    interrupted epoch's order (restarted from its beginning), not epoch 0's."""
    files = [tmp_path / "train-0.parquet"]
    write_parquet(files[0], first_id=0, count=12)
    data = [
        "data=coco",
        f"data.train.data_files=[{files[0]}]",
        f"data.val.data_files=[{files[0]}]",
        "data.val.limit=4",
        "data.train.shuffle_buffer=12",
        *SMALL,  # batch 4, no workers: 3 steps per epoch
        "model.backbone.weights=null",
        "callbacks.last_checkpoint.every_n_train_steps=1",
        "+callbacks.ids._target_=tests.app.helpers.RecordImageIds",
        "+callbacks.ids.output_dir=${paths.output_dir}",
    ]
    run("train.py", "trainer.max_steps=4", "trainer.max_epochs=-1", *data, log_dir=tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    first = json.loads((run_dir / "ids_rank0.json").read_text())
    last = run_dir / "checkpoints" / "last.ckpt"
    run(
        "train.py",
        "trainer.max_steps=6",
        "trainer.max_epochs=-1",
        f"ckpt_path={last}",
        *data,
        log_dir=tmp_path,
    )
    resumed = json.loads((run_dir / "ids_rank0.json").read_text())
    orders = {}
    for epoch in (0, 1):
        stream = HubCOCO(Transform(96), data_files=[str(files[0])], shuffle_buffer=12, seed=42)
        stream.set_epoch(epoch)
        orders[epoch] = [target["image_id"] for _, target in stream]
    assert orders[0] != orders[1]
    assert first == orders[0] + orders[1][:4]  # each epoch of the first run in its own order
    assert resumed == orders[1][: len(resumed)] and len(resumed) == 8


def test_a_run_of_unknown_length_refuses_to_start_naming_the_setting(tmp_path):
    """The LR schedule is laid over the run's steps. A hub stream without trainer.max_steps
    (Lightning counts -1 steps: every milestone passed at step 0, 1% of the LR), a run
    without an end and one of no steps stop at start-up; the same stream with its steps given
    trains (warned that its epochs, 2 by default, could end it first: not here, 4 steps)."""
    files = [tmp_path / "train-0.parquet"]
    write_parquet(files[0], first_id=0, count=8)
    stream = [
        "data=hub", "data.box_format=xyxy", f"data.train.data_files=[{files[0]}]",
        f"data.val.data_files=[{files[0]}]", *SMALL, "model.backbone.weights=null",
    ]  # fmt: skip
    with pytest.raises(AssertionError, match="trainer.max_steps: the training set is a stream"):
        run("train.py", *stream, log_dir=tmp_path / "logs")
    endless = "trainer.max_steps=-1 and trainer.max_epochs=-1: the run has no end"
    with pytest.raises(AssertionError, match=endless):
        run("train.py", "trainer.max_epochs=-1", *TINY, log_dir=tmp_path / "logs")
    for nothing in ("trainer.max_steps=0", "trainer.limit_train_batches=0"):
        with pytest.raises(AssertionError, match=f"{nothing} trains nothing"):
            run("train.py", nothing, *TINY, log_dir=tmp_path / "logs")
    steps = ["trainer.max_steps=3", "module.scheduler.warmup_steps=0"]
    result = run("train.py", *stream, *steps, log_dir=tmp_path / "steps")
    assert "trainer.max_epochs=2 may end this stream's run before trainer.max_steps=3" in (
        result.stdout + result.stderr
    )
    events = EventAccumulator(str(run_dirs(tmp_path / "steps")[0] / "tensorboard")).Reload()
    groups = [t for t in events.Tags()["scalars"] if t.startswith("lr-")]
    # 0.02 x batch 4 / 16, decayed at the milestones 0.67 and 0.89 of 3 steps: steps 2 and 3
    for tag in groups:  # with and without weight decay
        assert [e.value for e in events.Scalars(tag)] == pytest.approx([0.005, 0.005, 0.0005])
    assert len(groups) == 2


def test_a_stream_s_dataloader_worker_stops_with_the_run(tmp_path):
    """train.py run in this process, as `frcnn.fit` runs in a user's: when it returns, the
    training stream's DataLoader worker has stopped, as the other loaders' have (Lightning
    stops those). Here max_steps ends the first of two epochs, which left the worker running
    until the garbage collector stopped it, 5 s later (a time-out)."""
    files = [tmp_path / "train-0.parquet"]
    write_parquet(files[0], first_id=0, count=8)
    stream = [
        "data=hub", "data.box_format=xyxy", f"data.train.data_files=[{files[0]}]",
        f"data.val.data_files=[{files[0]}]", *SMALL, "data.num_workers=1",
        "model.backbone.weights=null", "trainer.max_steps=2", "report=false",
    ]  # fmt: skip
    before = set(multiprocessing.active_children())
    run("train.py", *stream, log_dir=tmp_path / "logs")
    assert set(multiprocessing.active_children()) - before == set()


def test_the_final_figures_are_the_best_checkpoint_on_the_whole_split(tmp_path):
    files = [tmp_path / "val-0.parquet"]
    write_parquet(files[0], first_id=0, count=12)
    result = run(
        "train.py",
        "data=coco",
        f"data.train.data_files=[{files[0]}]",
        f"data.val.data_files=[{files[0]}]",
        "data.val.limit=4",
        *SMALL,
        "model.backbone.weights=null",
        "trainer.max_steps=6",  # a stream is counted in steps: two epochs of 3
        "trainer.max_epochs=-1",
        "+callbacks.val_ids._target_=tests.app.helpers.RecordValidationIds",
        "+callbacks.val_ids.output_dir=${paths.output_dir}",
        log_dir=tmp_path / "logs",
    )
    run_dir = run_dirs(tmp_path / "logs")[0]
    passes = json.loads((run_dir / "val_ids.json").read_text())
    assert [len(p) for p in passes] == [4, 4, 12]  # two epochs on the subset, then all
    assert sorted(passes[-1]) == list(range(12))
    final = metrics(run_dir)
    assert {"val/map", "subset/val/map", "train/loss"} <= set(final)
    summary = result.stdout + result.stderr
    assert "last checkpoint:" in summary and "best checkpoint:" in summary


def test_resuming_another_models_checkpoint_names_the_settings_that_differ(trained, tmp_path):
    _, run_dir = trained
    last = shutil.copy(run_dir / "checkpoints" / "last.ckpt", tmp_path)  # not in a run folder
    with pytest.raises(AssertionError, match=r"model\.fpn_channels: 32 in the checkpoint, 64 here"):
        run("train.py", f"ckpt_path={last}", *TINY, "model.fpn_channels=64", log_dir=tmp_path)
    # other anchors of the same tensor shapes: the weights would load, their boxes mean nothing
    other = r"other anchors.*\n  model.anchors.sizes: .* in the checkpoint, .* here"
    with pytest.raises(AssertionError, match=other):
        run("train.py", f"ckpt_path={last}", *TINY, "anchors=fpn", log_dir=tmp_path)
    # the same detector on data of its 6 classes in another order: each label another class
    names = torch.load(last, weights_only=True)["class_names"]
    files = coco_json_folder(tmp_path / "mine", names[::-1])
    refused = rf"trained on the classes {', '.join(names)}; this data's labels are {names[-1]}, "
    with pytest.raises(AssertionError, match=refused):
        run("train.py", f"ckpt_path={last}", "data=coco_files", *files, *SMALL, log_dir=tmp_path)


def test_a_diverging_run_stops_with_one_message_naming_the_step(tmp_path):
    with pytest.raises(AssertionError, match="Non-finite loss at step") as error:
        run(
            "train.py",
            "module.optimizer.lr=1e6",
            "module.scheduler.warmup_steps=0",
            "trainer.max_epochs=3",
            *TINY,
            log_dir=tmp_path,
        )
    assert "IndexError" not in str(error.value)


def training_process(tmp_path, log_dir, extra_env=None, overrides=(), new_session=False):
    """A real train.py process, TINY and long, past its first epoch's checkpoints (in a process
    group of its own with `new_session`, as a terminal starts a command). What it prints goes
    to `tmp_path/printed.txt` (`printed_so_far`): a pipe that nobody reads until the end would stop
    the process once full."""
    command = [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={log_dir}", *TINY]
    env = process_env(**(extra_env or {}))
    with open(tmp_path / "printed.txt", "w") as out:
        process = subprocess.Popen(
            [*command, *overrides, "trainer.max_epochs=1000"], cwd=tmp_path, env=env,
            text=True, stdout=out, stderr=subprocess.STDOUT, start_new_session=new_session,
        )  # fmt: skip
    wait_for(process, lambda: list(log_dir.glob("train/runs/*/checkpoints/epoch*.ckpt")))
    return process


def printed_so_far(tmp_path) -> str:
    """What the training process of `training_process` has printed so far."""
    return (tmp_path / "printed.txt").read_text()


def finished(process, tmp_path, timeout_s: float) -> str:
    """What the training process printed, once it has exited."""
    process.wait(timeout=timeout_s)
    return printed_so_far(tmp_path)


def wait_for(process, found, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while not found():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)


SLURM = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "frcnn", "SLURM_NTASKS": "1",
         "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}  # fmt: skip


def test_preemption_saves_the_step_and_the_requeued_job_goes_on(tmp_path, monkeypatch):
    """A real train.py in a SLURM job, signalled as SLURM does before it preempts a job:

    - SIGUSR1 (`#SBATCH --signal=SIGUSR1@90`): Lightning saves hpc_ckpt_1.ckpt in the job's
      folder (and asks scontrol, absent here, to requeue the job);
    - SIGTERM: last.ckpt at the step it stopped at, the summary so far, the command that
      resumes, exit status 143;
    - the job's next run (the same command and job id) goes on in the same folder from the
      newer of the two, last.ckpt."""
    log_dir = tmp_path / "logs"
    process = training_process(tmp_path, log_dir, SLURM)
    time.sleep(1.0)  # into the next epoch
    run_dir = log_dir / "train" / "runs" / "slurm-4242"
    process.send_signal(signal.SIGUSR1)
    wait_for(process, lambda: (run_dir / "hpc_ckpt_1.ckpt").is_file())
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    printed = finished(process, tmp_path, 120)
    assert process.returncode == 143, printed[-3000:]
    hpc = torch.load(run_dir / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    step = int(re.search(r"Stopped by SIGTERM at step (\d+)", printed).group(1))
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == step >= hpc["global_step"] > 4  # past epoch 0's end
    assert (
        "train stopped after " in printed and "train finished" not in printed
    )  # the summary so far
    resume = re.search(r"Resume with: (.*)", printed).group(1)
    assert (
        resume.startswith("uv run train.py") and f"ckpt_path={last.relative_to(tmp_path)}" in resume
    )
    for key, value in SLURM.items():
        monkeypatch.setenv(key, value)
    epochs = saved["epoch"] + 2
    run("train.py", f"trainer.max_epochs={epochs}", *TINY, log_dir=log_dir)
    assert run_dirs(log_dir) == [run_dir]
    # the steps this process logged (its event files end in .<pid>.<n>) start at last.ckpt's
    steps = []
    for path in (run_dir / "tensorboard").glob(f"events.*.{os.getpid()}.*"):
        events = EventAccumulator(str(path)).Reload()
        if "train/loss_step" in events.Tags()["scalars"]:
            steps += [e.step for e in events.Scalars("train/loss_step")]
    assert steps and min(steps) == saved["global_step"]
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 4 * epochs and resumed["epoch"] == epochs - 1


def test_ctrl_c_during_validation_keeps_the_step_as_sigterm_does(tmp_path):
    """Ctrl-C as a terminal sends it (SIGINT to the command's every process, its DataLoader
    worker too) while a long validation runs: it ends, training stops after the next step,
    last.ckpt holds that step, the summary and the resume command are printed, exit 130
    (Lightning's own handling exits 1 with no checkpoint)."""
    log_dir = tmp_path / "logs"
    overrides = ["data.val.num_images=100", "data.num_workers=1"]
    process = training_process(tmp_path, log_dir, overrides=overrides, new_session=True)
    validations = printed_so_far(tmp_path).count("Validation DataLoader 0:   0%")
    # epoch 1's 4 steps, then into its validation
    wait_for(process, lambda: printed_so_far(tmp_path).count("Validation DataLoader 0:   0%")
             > validations)  # fmt: skip
    os.killpg(process.pid, signal.SIGINT)
    printed = finished(process, tmp_path, 180)
    assert process.returncode == 130, printed[-3000:]
    # taken while the validation ran: it ended after the signal
    assert "Validation DataLoader 0: 100%" in printed.split("SIGINT (Ctrl-C)")[1], printed[-3000:]
    step = int(re.search(r"Stopped by SIGINT at step (\d+)", printed).group(1))
    (run_dir,) = run_dirs(log_dir)
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == step > 4
    assert "Resume with: uv run train.py" in printed


def test_two_nodes_through_torchrun_share_one_folder_and_stop_together_on_sigterm(tmp_path):
    """`torchrun --nnodes 2 ... --rdzv-id <job>` on each node (here both on this machine, gloo,
    started a second apart): one run folder, `runs/torchrun-<job>/`. SIGTERM to the first
    node's torchrun (what a scheduler sends; it passes it to its worker) stops both nodes'
    workers after the same step, last.ckpt holds it, and nothing is left running."""
    torchrun = Path(sys.executable).parent / "torchrun"
    env = process_env()
    log_dir, nodes, port = tmp_path / "logs", [], 29400 + os.getpid() % 500
    for node in range(2):
        launch = ["--nnodes=2", "--nproc-per-node=1", f"--node-rank={node}", "--rdzv-id=job7",
                  "--master-addr=127.0.0.1", f"--master-port={port}"]  # fmt: skip
        overrides = [f"paths.log_dir={log_dir}", *TINY, "trainer.max_epochs=1000",
                     "device=ddp", "trainer.accelerator=cpu", "trainer.devices=1",
                     "trainer.num_nodes=2"]  # fmt: skip
        nodes.append(subprocess.Popen(
            [str(torchrun), *launch, str(ROOT / "train.py"), *overrides], cwd=tmp_path, env=env,
            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        ))  # fmt: skip
        time.sleep(1.1)  # another second: another folder name, were it taken from the time
    run_dir = log_dir / "train" / "runs" / "torchrun-job7"
    wait_for(nodes[0], lambda: (run_dir / "checkpoints" / "last.ckpt").is_file())
    time.sleep(0.5)
    nodes[0].send_signal(signal.SIGTERM)
    printed = [node.communicate(timeout=120)[0] for node in nodes]
    assert [p.name for p in run_dir.parent.iterdir()] == [run_dir.name]
    stop = re.search(r"Stopped by SIGTERM at step (\d+)", printed[0])
    # a failure shows how each node's torchrun exited, every line about the signal (when its
    # worker took it: the progress bar's lines fill the output's end) and what it printed last
    shown = "\n\n".join(
        f"node {i}, exit {node.returncode}:\n"
        + "\n".join(line[-300:] for line in out.splitlines() if "SIG" in line)
        + f"\n...\n{out[-3000:]}"
        for i, (node, out) in enumerate(zip(nodes, printed, strict=True))
    )
    assert stop, shown
    step = int(stop.group(1))
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == step > 2  # past the first epoch (2 steps: 16 images, 2 x 4)
    assert "Resume with: uv run train.py" in printed[0]
    assert not subprocess.run(["pgrep", "-f", str(log_dir)], capture_output=True).stdout


def validation_passes(tmp_path, *overrides) -> tuple[list, Path]:
    """The image ids of each validation pass of a run, and its run folder."""
    log_dir = tmp_path / "logs"
    record = [
        "+callbacks.val_ids._target_=tests.app.helpers.RecordValidationIds",
        "+callbacks.val_ids.output_dir=${paths.output_dir}",
    ]
    run("train.py", *TINY, *record, *overrides, log_dir=log_dir)
    run_dir = run_dirs(log_dir)[-1]
    return json.loads((run_dir / "val_ids.json").read_text()), run_dir


def test_the_best_checkpoint_is_validated_again_only_when_it_is_not_the_last(tmp_path):
    # one epoch: the best is the last step's, whose validation gave the final figures
    assert len(validation_passes(tmp_path / "a", "trainer.max_epochs=1")[0]) == 1
    # a model that does not change (an LR too small to move a float32 weight, frozen
    # statistics) ties at every validation: the best stays epoch 0's, which the end validates
    # again
    frozen = ["module.optimizer.lr=1e-30", "model.backbone.norm=frozen_bn", "trainer.max_epochs=2"]
    passes, run_dir = validation_passes(tmp_path / "b", *frozen)
    assert len(passes) == 3
    # train.log keeps a line per validation of the training (not the end's again)
    said = re.findall(
        r"Validation at step (\d+) \(epoch (\d), (\d+) images\): val/map (\S+),",
        (run_dir / "train.log").read_text(),
    )
    steps = int(said[0][0])
    final = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    images, val_map = str(final["val/images"]), f"{final['val/map']:.4f}"
    assert said == [(str(steps), "0", images, val_map), (str(2 * steps), "1", images, val_map)]


def test_a_validation_without_one_readable_image_says_so(tmp_path):
    """A user's COCO json whose validation images are all broken: one line naming the cause
    (rather than a KeyError from the metric)."""
    data = coco_json_folder(tmp_path / "mine", ["a"], broken_val=True)
    size = ["data.image_size=64", "data.batch_size=2", "data.num_workers=0", "trainer.max_steps=2"]
    with pytest.raises(AssertionError, match="no validation image could be read"):
        run("train.py", "data=coco_files", *data, *size, *SMALL_MODEL, "device=cpu",
            log_dir=tmp_path / "logs")  # fmt: skip


def test_the_summary_lists_the_images_skipped_in_the_run(tmp_path):
    """A broken training image (skipped at every epoch, in a DataLoader worker) and a broken
    validation image (at every validation): the warnings scroll by; the summary names each
    once per source and reason, with its count of images, not of times."""
    data = coco_json_folder(tmp_path / "mine", ["a"])
    for name in ("train2.jpg", "val1.jpg"):
        (tmp_path / "mine" / "images" / name).write_bytes(b"\xff\xd8 not a jpeg")
    size = ["data.image_size=64", "data.batch_size=2", "data.num_workers=1"]
    result = run("train.py", "data=coco_files", *data, *size, "trainer.max_epochs=2",
                 *SMALL_MODEL, "device=cpu", log_dir=tmp_path / "logs")  # fmt: skip
    printed = result.stdout + result.stderr
    mine = tmp_path / "mine"
    assert printed.count("unreadable image skipped (image 2 (train2.jpg))") == 2  # once an epoch
    summary = printed[printed.index("train finished in") :]
    assert (
        "Images skipped or repaired, each a warning in train.log:\n"
        f"  coco json {mine / 'train.json'}, images in {mine / 'images'}: unreadable image "
        "skipped: 1 image\n"
        f"  coco json {mine / 'val.json'}, images in {mine / 'images'}: unreadable image "
        "skipped: 1 image\n"
    ) in summary, summary
    (log_file,) = (tmp_path / "logs" / "train" / "runs").glob("*/train.log")
    assert "unreadable image skipped (image 2 (train2.jpg))" in log_file.read_text()


def test_an_explosion_shorter_than_a_window_stops_the_run(tmp_path):
    """LR 1e6 for 12 steps (the rule's windows are 20): the steps before the validation are
    compared with the first step's loss."""
    with pytest.raises(AssertionError, match="The training loss exploded: .* over steps 0-11"):
        run(
            "train.py", "module.optimizer.lr=1e6", "trainer.max_steps=12",
            "trainer.max_epochs=-1", "data.train.num_images=48", "data.val.num_images=8", *SMALL,
            log_dir=tmp_path,
        )  # fmt: skip


def test_a_run_that_trains_or_validates_nothing_says_which_setting_decides(tmp_path):
    """2 steps of a 4-step epoch: no validation, said; resumed with more max_steps but the
    same max_epochs: no step trained, said with the limit that stopped it."""
    first = run("train.py", "trainer.max_steps=2", *TINY, log_dir=tmp_path)
    said = first.stdout + first.stderr
    assert "No validation ran: the run's 2 steps ended before the first one" in said
    # and not as Lightning would say it (its checkpoint callback's "HINT: Did you call log")
    assert "could not find the monitored key" not in said
    done = run("train.py", "trainer.max_epochs=1", *TINY, log_dir=tmp_path / "one")
    last = run_dirs(tmp_path / "one")[0] / "checkpoints" / "last.ckpt"
    resumed = run(
        "train.py", f"ckpt_path={last}", "trainer.max_steps=8", "trainer.max_epochs=1", *TINY,
        log_dir=tmp_path / "one",
    )  # fmt: skip
    assert "train finished" in done.stdout + done.stderr
    assert (
        "No step was trained: the run is at step 4, after 1 epochs, which trainer.max_epochs=1 has "
        "reached" in resumed.stdout + resumed.stderr
    )


def test_a_ddp_run_whose_port_is_taken_names_it_and_leaves_no_process(tmp_path):
    """MASTER_PORT held by another program: the first process fails to start its store, says
    which port, and the process Lightning started beside it (which would wait for it for half
    an hour) is stopped too, at once: nothing of the run is left in its session."""
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        size = [o for o in TINY if o != "device=cpu"]
        command = [
            sys.executable, str(ROOT / "train.py"), f"paths.log_dir={tmp_path / 'logs'}",
            "device=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *size,
        ]  # fmt: skip
        process = subprocess.Popen(
            command, cwd=tmp_path, env=process_env(MASTER_PORT=str(port)), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        printed, _ = process.communicate(timeout=300)
    assert process.returncode == 1, printed[-3000:]
    assert f"MASTER_PORT={port}: the port is taken" in printed
    assert "still running 0 s after the run: killed" in printed  # no grace: no store to join
    assert "Traceback" not in printed
    time.sleep(1.0)
    left = subprocess.run(["pgrep", "-s", str(process.pid)], capture_output=True, text=True)
    assert left.stdout.split() == [], left.stdout


def test_repeat_factor_sampling_repeats_the_rare_classes_images_and_reports_it(
    only_matplotlibs_fonts, tmp_path
):
    """A user's COCO json of 4 training images: person and 安全帽 (a helmet) in one each
    (f = 1/4), car in two; threshold 0.5: r = sqrt(2) for the first two, 1 for the cars; an
    epoch of 5. The Chinese name, on a machine without a font for it: one warning that says
    what to install, not matplotlib's for each character of each figure."""
    data = coco_json_folder(tmp_path / "mine", ["person", "car", "安全帽"])
    size = ["data.image_size=64", "data.batch_size=1", "data.num_workers=0", "device=cpu"]
    out = run("train.py", "data=coco_files", *data, *size, *SMALL_MODEL, "trainer.max_epochs=1",
              "data.train.repeat_factor_threshold=0.5", log_dir=tmp_path / "logs")  # fmt: skip
    printed = out.stdout + out.stderr
    assert "an epoch of 5 images in place of 4" in printed
    (run_dir,) = run_dirs(tmp_path / "logs")
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    rows = (run_dir / "report" / "sampling.csv").read_text().splitlines()
    share = {row.split(",")[0]: [float(v) for v in row.split(",")[2:]] for row in rows[1:]}
    assert share["person"] == pytest.approx([25, 100 * 2**0.5 / (2 * 2**0.5 + 2)])
    assert "repeat-factor sampling" in (run_dir / "report" / "index.md").read_text()
    assert printed.count("no installed font has (全 安 帽)") == 1, printed[-3000:]
    assert "missing from font" not in printed
    assert {"pr_curves.png", "confusion_matrix.png", "dataset.png"} <= {
        p.name for p in (run_dir / "report").iterdir()
    }


def test_freezing_random_stages_is_warned(tmp_path):
    """The demo's backbone has no pretrained weights: frozen=stem would keep a random stem."""
    warning = "model.backbone.frozen=stem keeps the backbone's stages up to stem as they are"
    out = run("train.py", "frozen=stem", "trainer.max_steps=1", *TINY, log_dir=tmp_path / "a")
    assert warning in out.stdout + out.stderr and "frozen=none" in out.stdout + out.stderr
    out = run("train.py", "trainer.max_steps=1", *TINY, log_dir=tmp_path / "b")
    assert "keeps the backbone's stages" not in out.stdout + out.stderr


def test_a_run_resumed_mid_epoch_says_what_becomes_of_the_epoch(tmp_path):
    """last.ckpt at step 2 of a 4-step epoch; resumed, the epoch ends after its 2 remaining
    steps, as the message says (Lightning's own warning is not shown)."""
    every_2 = "callbacks.last_checkpoint.every_n_train_steps=2"
    run("train.py", "trainer.max_steps=2", every_2, *TINY, log_dir=tmp_path)
    last = run_dirs(tmp_path)[0] / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2
    resumed = run("train.py", f"ckpt_path={last}", "trainer.max_epochs=1", every_2, *TINY,
                  log_dir=tmp_path)  # fmt: skip
    printed = resumed.stdout + resumed.stderr
    assert "Resumed after 2 of the 4 batches of epoch 0: its last 2 steps take" in printed
    assert "not resumable" not in printed
    assert torch.load(last, weights_only=True)["global_step"] == 4  # epoch 0 ended at step 4
