"""Running the real entry points on tiny synthetic data, in a temporary log folder."""

import contextlib
import io
import json
import os
import runpy
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
from PIL import Image

from frcnn.app.command import register_resolvers

ROOT = Path(__file__).parents[2]

# a narrow detector: fewer FPN channels, proposals, sampled rows and box-head units
SMALL_MODEL = [
    "model.fpn_channels=32",
    "model.rpn.pre_nms_top_n_train=200",
    "model.rpn.post_nms_top_n_train=100",
    "model.rpn.pre_nms_top_n_test=100",
    "model.rpn.post_nms_top_n_test=50",
    "model.roi_heads.representation_size=64",
    "model.roi_heads.batch_size_per_image=32",
]
# a run of a few seconds on the CPU: 16 tiny images, a narrow ResNet-18 detector
SMALL = [
    "data.image_size=96",
    "data.batch_size=4",
    "data.num_workers=0",
    *SMALL_MODEL,
    "trainer.log_every_n_steps=1",
    "device=cpu",
]
# SMALL on 16 + 8 images, without report/ (its five figures are ~1.3 s of such a run): a test
# that reads the report adds "report=auto" after TINY (the last value given wins)
TINY = ["data.train.num_images=16", "data.val.num_images=8", *SMALL, "report=false"]


def readme_blocks(language: str = "python") -> dict[str, str]:
    """{heading: text} of the README's blocks in `language` (```python), each under the nearest
    heading above it (`### ONNX`); a heading with two such blocks would fail here."""
    blocks, heading, block, code = {}, "", None, []  # block: the open block's language
    for line in (ROOT / "README.md").read_text().splitlines(keepends=True):
        if line.startswith("```") and block is None:
            block, code = line[3:].strip(), []
        elif line.startswith("```"):
            if block == language:
                assert heading not in blocks, f"two {language} blocks under {heading!r}"
                blocks[heading] = "".join(code)
            block = None
        elif block is not None:
            code.append(line)
        elif line.startswith("#"):
            heading = line.strip()
    return blocks


def run(script: str, *overrides: str, log_dir: Path, separate_process: bool = False):
    """Run the entry point `script` (train.py, eval.py, ...) with Hydra overrides, logs under
    `log_dir`; returns its output (.stdout, .stderr)."""
    flags = [o for o in overrides if o.startswith("-")]  # e.g. -m: before the overrides
    args = [*flags, f"paths.log_dir={log_dir}", *(o for o in overrides if not o.startswith("-"))]
    return run_script(ROOT / script, args, ROOT, separate_process)


def refused(script: str, *args: str, log_dir: Path) -> str:
    """What `script` printed where it stopped with exit status 1 and a message alone."""
    with pytest.raises(AssertionError, match=f"{script} failed \\(1\\)") as failed:
        run(script, *args, log_dir=log_dir)
    printed = str(failed.value)
    assert "Traceback" not in printed and "HYDRA_FULL_ERROR=1 shows the traceback" in printed
    return printed


def process_env(**extra: str) -> dict[str, str]:
    """The environment of a process the tests start (a run that starts processes itself)."""
    # tests/processes: its sitecustomize spares them datasets' sleep as conftest.py spares this one
    path = os.pathsep.join([str(ROOT / "tests" / "processes"), str(ROOT)])
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # each process would compile torch anew: 6 s
    # the processes of a DDP run share this machine's cores: one thread each, not two each
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_script(script: Path, args: list[str], cwd: Path, separate_process: bool = False):
    """Run an entry point as `python <script> <args>` from the working directory `cwd`;
    returns its output (.stdout, .stderr); fails with its output if it exits with an error.

    In this process by default (the import of torch and Lightning is paid once); in a
    separate process where the run spawns processes itself (DDP). Here, the Python warnings
    that the command's own process would print end its .stderr (pytest would record them
    apart, where no test reads them): those of every category but the deprecations that
    Python shows only in `__main__`.
    """
    argv = [str(script), *args]
    if separate_process:
        result = subprocess.run(
            [sys.executable, *argv], cwd=cwd, env=process_env(), capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, (
            f"{script.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
        return result
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd = sys.argv, Path.cwd()
    sys.argv = argv
    os.chdir(cwd)
    try:
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(record=True) as shown,
        ):
            for category in (DeprecationWarning, PendingDeprecationWarning):
                warnings.filterwarnings("ignore", category=category)  # (pytest shows them)
            try:
                runpy.run_path(str(script), run_name="__main__")
            finally:
                for w in shown:
                    err.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno))
    except SystemExit as exit_:  # Hydra exits on errors after printing them (and after --help)
        if exit_.code not in (0, None):
            raise AssertionError(
                f"{script.name} failed ({exit_.code}):\n{out.getvalue()[-3000:]}\n"
                f"{err.getvalue()[-6000:]}"
            ) from exit_
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return SimpleNamespace(stdout=out.getvalue(), stderr=err.getvalue())


def composed(tmp_path: Path, *overrides: str, config_name: str = "train"):
    """A config composed as the entry point would, with outputs under `tmp_path`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    register_resolvers()  # the entry points' (run_dir, study_seed)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            config_name, [f"paths.log_dir={tmp_path}/logs", *overrides], return_hydra_config=True
        )
    HydraConfig.instance().set_config(cfg)
    cfg.paths.output_dir = str(tmp_path / "out")
    return cfg


def coco_json_folder(root: Path, names: list[str], broken_val: bool = False) -> list[str]:
    """A user's COCO json in folders of its own: `root`/{train,val}.json (4 and 2 images, one
    box each, classes `names`) and `root`/images (broken validation images with `broken_val`).
    Returns the data=coco_files overrides that point at it."""
    (root / "images").mkdir(parents=True)
    categories = [{"id": 3 + 2 * c, "name": name} for c, name in enumerate(names)]
    for split, count in (("train", 4), ("val", 2)):
        images, annotations = [], []
        for i in range(1, count + 1):
            name = f"{split}{i}.jpg"
            broken = broken_val and split == "val"
            (root / "images" / name).write_bytes(b"\xff\xd8 not a jpeg" if broken else jpeg(96, 64))
            images.append({"id": i, "file_name": name, "width": 96, "height": 64})
            category = categories[i % len(categories)]["id"]
            box = {"bbox": [5, 5, 40, 30], "area": 1200, "iscrowd": 0}
            annotations.append({"id": i, "image_id": i, "category_id": category, **box})
        coco = {"images": images, "annotations": annotations, "categories": categories}
        (root / f"{split}.json").write_text(json.dumps(coco))
    files = (("annotation_file", "{split}.json"), ("image_dir", "images"))
    return [
        f"data.{split}.{key}={root / value.format(split=split)}"
        for split in ("train", "val")
        for key, value in files
    ]


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 60, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def run_dirs(log_dir: Path, task: str = "train") -> list[Path]:
    return sorted((log_dir / task / "runs").iterdir())


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["metrics"]


class RecordImageIds(L.Callback):
    """Writes the image ids each rank trained on to `<output_dir>/ids_rank<r>.json`."""

    def __init__(self, output_dir: str):
        self.output_dir, self.ids = Path(output_dir), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.ids += [t["image_id"] for t in batch["targets"]]

    def on_train_end(self, trainer, pl_module):
        path = self.output_dir / f"ids_rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.ids))


class RecordValidationIds(L.Callback):
    """Writes the image ids of every validation pass to `<output_dir>/val_ids.json`."""

    def __init__(self, output_dir: str):
        self.output_dir, self.passes = Path(output_dir), []

    def on_validation_epoch_start(self, trainer, pl_module):
        self.passes.append([])

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.passes[-1] += [t["image_id"] for t in batch["targets"]]

    def on_validation_end(self, trainer, pl_module):
        (self.output_dir / "val_ids.json").write_text(json.dumps(self.passes))


class RecordTrial(L.Callback):
    """Writes the GPUs a run may use (CUDA_VISIBLE_DEVICES), when the run was built (this
    callback made: its trainer, model and data follow) and when its training ended to
    `<output_dir>/trial.json`. A trial waits (up to 2 minutes) until `together` trials of its
    sweep have been built: a 1-step trial lasts a second, less than two processes' start-ups
    may differ by on a busy 2-core machine, so trials that do run side by side are seen to
    overlap, and trials run one after the other are not (the first waits in vain)."""

    def __init__(self, output_dir: str, together: int = 2):
        self.output_dir = Path(output_dir)
        sweep = self.output_dir.parent
        (sweep / f".built_{self.output_dir.name}").touch()
        deadline = time.time() + 120
        while len(list(sweep.glob(".built_*"))) < together and time.time() < deadline:
            time.sleep(0.1)
        self.record = {"gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": time.time()}

    def on_fit_end(self, trainer, pl_module):
        self.record["end"] = time.time()
        (self.output_dir / "trial.json").write_text(json.dumps(self.record))
