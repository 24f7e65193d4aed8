"""The README's commands as a user types them.

Every `uv run <script>.py ...` line of the README's bash blocks runs here as `python <script>.py
...` from a temporary copy of the checkout as its working directory, with the default `paths`,
`hydra` and callback settings. A command gets only

- the size-reducing overrides of SIZE (smaller images, batches, data and model, a few steps,
  validation every few steps), added to training commands (but no step count for a stream
  whose command gives none: that run must refuse to start, as it does for a user);
- the README's own offline forms where a command would read the hub (LOCAL: local parquet
  copies, a COCO folder under COCO_ROOT) and `device=cpu` (this machine has no GPU;
  `device=ddp` gets the README's CPU form instead); the weights a command downloads
  (`init_weights=coco`, ImageNet's) are in torch's download cache (TORCH_HOME), as after a
  first download, and read through torchvision's own download code;
- this workspace's files in place of the README's placeholders (`<run>`, `<ckpt>`, `...`,
  `/data/coco`, `/path/`).

Its python examples run here too (the scripts a user writes as commands, the others in this
process), with the same sizes, offline forms and placeholders given.

So a README edit that breaks a command fails here, and a command added to the README runs too.
`experiment=coco400` runs end to end: trained, resumed from its `last.ckpt`, then evaluated,
swept, predicted with, exported and drawn by the README's other commands.
"""

import csv
import functools
import itertools
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from PIL import Image

import frcnn.data
import frcnn.model
from frcnn.structures import counted
from frcnn.training.sweep import TRIAL_GPUS
from tests.app.helpers import ROOT, SMALL_MODEL, readme_blocks, run_script
from tests.app.test_predict_video import write_clip
from tests.data.conftest import cppe5_parquet, hub_row, jpeg_bytes, write_hub_parquet

# one process runs this module: its workspace and the coco400 chain are built once (not once per
# test process), and a command that runs another's output (model_file=) finds it there
pytestmark = pytest.mark.xdist_group("readme")

# the only overrides a README training command gets, by the data it reads
SIZE = {
    "synthetic": [
        "data.train.num_images=2",
        "data.val.num_images=2",
        "data.image_size=64",
        "data.batch_size=2",
        "trainer.max_steps=1",
        *SMALL_MODEL,
    ],
    "coco": [
        "data.image_size=64",
        "data.batch_size=2",
        "data.num_workers=2",
        "model.backbone.depth=18",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        *SMALL_MODEL,
    ],
}
# fewer runs for a ready-made search (hparams_search=...), and how many that leaves
SWEEP_SIZE = {
    # one value of each of the 3x2x2 grid's settings (the command line's wins): one run
    "nms_iou": (
        [
            "model.rpn.nms_thresh=0.7",
            "model.roi_heads.fg_iou_thresh=0.5",
            "model.roi_heads.bg_iou_thresh=0.5",
        ],
        1,
    ),  # fmt: skip
    "nms_iou_optuna": (["hydra.sweeper.n_trials=2"], 2),
}
# the README's offline forms, in this workspace (`{ws}`)
LOCAL = {
    "hub": [
        "data.train.data_files={ws}/data/coco/data/train-*.parquet",
        "data.val.data_files={ws}/data/coco/data/val-*.parquet",
    ]
}
TORCHVISION_COCO = "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"
IMAGENET_RESNET18 = "resnet18-f37072fd.pth"
# the size overrides that change the shapes of the model's weights
WEIGHT_SHAPES = (
    "model.backbone.depth=",
    "model.fpn_channels=",
    "model.roi_heads.representation_size=",
)
README = ROOT / "README.md"
# the first two steps of the coco400 chain (coco400_run), not run on their own
TRAIN_COCO = "uv run train.py experiment=coco400"
RESUME_COCO = "uv run train.py experiment=coco400 ckpt_path="


def readme_files() -> dict[str, str]:
    """{name: text} of the README's python blocks whose first line is `# <name>.py`: the
    scripts of its own that a user writes (then runs, `uv run <name>.py`)."""
    blocks = [code.partition("\n") for code in readme_blocks().values()]
    return {first[2:]: rest for first, _, rest in blocks if re.fullmatch(r"# \w+\.py", first)}


def readme_commands() -> list[tuple[str, str]]:
    """(section, line) of every `uv run <script>.py` line of the README's bash blocks, comments
    dropped; not `uv run pytest` (this suite)."""
    section, in_block, commands = "", False, []
    for line in README.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("```"):
            in_block = line.strip() == "```bash"
        elif in_block and re.match(r"uv run \w+\.py\b", line):
            commands.append((section, line.split("  #")[0].strip()))
    return commands


def in_chain(line: str) -> bool:
    return line == TRAIN_COCO or line.startswith(RESUME_COCO)


def readme_line(start: str) -> str:
    """The README's command that is `start` or, for a `start` ending in "=", begins with it."""
    found = [line for _, line in readme_commands() if line == start or line.startswith(start)]
    found = [line for line in found if start.endswith("=") or line == start]
    assert len(found) == 1, f"the README should have one command {start!r}...: {found}"
    return found[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Iterator[Path]:
    """A copy of the checkout, with the local data and weights that the README's offline forms
    name: hub-schema parquet under data/coco/data, a COCO folder at data/coco, photos, weights
    (also in torch's download cache, as after a first download)."""
    ws = tmp_path_factory.mktemp("checkout")
    for name in checkout_files(ROOT):
        (ws / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, ws / name)
    hub = ws / "data" / "coco" / "data"
    hub.mkdir(parents=True)
    # shards of different sizes, as the hub's are, and one unreadable validation image: under
    # DDP the processes hold different numbers of images
    for shard, (first, count) in enumerate([(0, 2), (2, 2), (4, 2), (6, 1)]):
        write_hub_parquet(hub / f"train-{shard:05d}-of-00004.parquet", objects(first, count))
    val = objects(100, 7)
    val[3]["image"] = {"bytes": jpeg_bytes(160, 120)[:300], "path": None}  # truncated
    write_hub_parquet(hub / "val-00000-of-00001.parquet", val)
    for name, text in readme_files().items():
        (ws / name).write_text(text)
    coco_folder(ws / "data" / "coco")
    own_formats(ws / "data")
    for folder, count in (("photos", 2), ("shots/day1", 1), ("shots/day2", 1)):
        (ws / folder).mkdir(parents=True)
        for i in range(count):
            (ws / folder / f"{i}.jpg").write_bytes(jpeg_bytes(160 + 40 * i, 120))
    write_clip(ws / "clip.mp4")
    weights = ws / "weights"  # the README's /path/ of a downloaded file
    weights.mkdir()
    torch.save(torchvision.models.resnet18().state_dict(), weights / IMAGENET_RESNET18)
    detector = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None
    )
    torch.save(detector.state_dict(), weights / TORCHVISION_COCO)
    downloaded = ws / "torch" / "hub" / "checkpoints"  # torch's download cache (TORCH_HOME)
    downloaded.mkdir(parents=True)
    for name in (IMAGENET_RESNET18, TORCHVISION_COCO):
        (downloaded / name).hardlink_to(weights / name)
    # data=coco_files reads $COCO_ROOT, as the README says; torch downloads to $TORCH_HOME
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("COCO_ROOT", str(ws / "data" / "coco"))
        environment.setenv("TORCH_HOME", str(ws / "torch"))
        yield ws


def checkout_files(root: Path) -> list[str]:
    """The files of the checkout at `root` that a clone of it holds, and those not committed yet
    (git's tracked and untracked files): none of what .gitignore keeps out, which a checkout
    may hold by the gigabyte (environments, data sets, runs, weights). Outside a git checkout
    (an unpacked archive): every file but those under `.git`, `.venv` and `__pycache__`."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root, capture_output=True, check=True,
        ).stdout.decode()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        skipped = {".git", ".venv", "__pycache__"}
        return [
            str(path.relative_to(root))
            for path in root.rglob("*")
            if path.is_file() and not skipped & set(path.relative_to(root).parts)
        ]
    return [name for name in listed.split("\0") if name and (root / name).is_file()]


def objects(first_id: int, count: int) -> list[dict]:
    """Hub rows of landscape and portrait images, one box each, categories 0..3."""
    sizes = [(160, 120), (120, 160), (200, 100)]
    rows = []
    for i in range(first_id, first_id + count):
        width, height = sizes[i % 3]
        x, y = 10 + 7 * (i % 5), 10 + 5 * (i % 4)
        rows.append(hub_row(i, width, height, [[x, y, x + width / 3, y + height / 3]], [i % 4]))
    return rows


def coco_folder(root: Path) -> None:
    """The official COCO layout (annotations/instances_{train,val}2017.json, image folders)."""
    (root / "annotations").mkdir()
    for split, count in (("train", 4), ("val", 3)):  # an odd validation set
        (root / f"{split}2017").mkdir()
        images, annotations = [], []
        for i in range(1, count + 1):
            (root / f"{split}2017" / f"{i:012d}.jpg").write_bytes(jpeg_bytes(128, 96))
            images.append({"id": i, "file_name": f"{i:012d}.jpg", "width": 128, "height": 96})
            box = [10 + 5 * i, 10, 40, 30]
            annotations.append(
                {"id": i, "image_id": i, "category_id": 1 + i % 3, "bbox": box, "iscrowd": 0}
            )
        # a user's classes: two that COCO has (init_weights carries their rows over), one not
        names = {1: "person", 2: "car", 3: "widget"}
        categories = [{"id": c, "name": name} for c, name in names.items()]
        coco = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco))


OWN_CLASSES = ("person", "car", "widget")  # two classes COCO has, one it has not


def own_formats(data: Path) -> None:
    """A user's data in each format of the README's "Training on your own data": a COCO json in
    folders of its own, a YOLO folder (Ultralytics' layout) and a VOC2007 folder."""
    mine = data / "mine"
    for folder in ("images", "annotations"):
        (mine / folder).mkdir(parents=True)
    categories = [{"id": 5 + 12 * c, "name": name} for c, name in enumerate(OWN_CLASSES)]
    yolo, voc = data / "yolo", data / "VOCdevkit" / "VOC2007"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / folder).mkdir(parents=True)
    for split, ids in (("train", range(1, 5)), ("val", range(5, 8))):  # an odd validation set
        images, annotations = [], []
        for folder in ("images", "labels"):
            (yolo / folder / split).mkdir(parents=True)
        for i in ids:
            name, image = f"{split}_{i}.jpg", jpeg_bytes(128, 96)
            x, c = 10 + 5 * i, i % 3
            (mine / "images" / name).write_bytes(image)
            images.append({"id": i, "file_name": name, "width": 128, "height": 96})
            box = {"bbox": [x, 10, 40, 30], "iscrowd": 0, "area": 1200}
            annotations.append({"id": i, "image_id": i, "category_id": 5 + 12 * c, **box})
            (yolo / "images" / split / name).write_bytes(image)
            centre = f"{(x + 20) / 128:.4f} {25 / 96:.4f} {40 / 128:.4f} {30 / 96:.4f}"
            (yolo / "labels" / split / f"{split}_{i}.txt").write_text(f"{c} {centre}\n")
            (voc / "JPEGImages" / name).write_bytes(image)
            obj = (
                f"<object><name>{('person', 'car', 'dog')[c]}</name><difficult>0</difficult>"
                f"<bndbox><xmin>{x + 1}</xmin><ymin>11</ymin><xmax>{x + 40}</xmax>"
                "<ymax>40</ymax></bndbox></object>"
            )
            xml = f"<annotation><filename>{name}</filename>{obj}</annotation>"
            (voc / "Annotations" / f"{split}_{i}.xml").write_text(xml)
        coco = {"images": images, "annotations": annotations, "categories": categories}
        (mine / "annotations" / f"{split}.json").write_text(json.dumps(coco))
        ids_file = voc / "ImageSets" / "Main" / f"{split}.txt"
        ids_file.write_text("".join(f"{split}_{i}\n" for i in ids))
    # a Kaggle set in VOC's xml (face-mask-detection): annotations/, images/ of PNGs, no split
    kaggle = data / "face-mask"
    for folder in ("annotations", "images"):
        (kaggle / folder).mkdir(parents=True)
    for i in range(10):
        name, x = f"maksssksksss{i}", 10 + 5 * i
        Image.new("RGB", (128, 96), (120, 60, 30)).save(kaggle / "images" / f"{name}.png")
        obj = (
            f"<object><name>{('with_mask', 'without_mask')[i % 2]}</name><bndbox>"
            f"<xmin>{x}</xmin><ymin>10</ymin><xmax>{x + 40}</xmax><ymax>40</ymax></bndbox></object>"
        )
        xml = f"<annotation><filename>{name}.png</filename>{obj}</annotation>"
        (kaggle / "annotations" / f"{name}.xml").write_text(xml)
    # a hub set in cppe-5's schema (xywh pixel boxes), its format to be read from the rows:
    # as xyxy, the first box of each image is inverted
    hub = data / "hub"
    hub.mkdir()
    telling = [(120, 10, 50, 40, 4), (10, 20, 30, 30, 2)]
    cppe5_parquet(hub / "train-00000-of-00001.parquet", [telling] * 4)
    cppe5_parquet(hub / "val-00000-of-00001.parquet", [telling] * 3)
    # a set in the hub's layout for sets uploaded as files: images and a metadata.jsonl per
    # split, no id column, plain integer categories, xywh pixel boxes
    for split, count in (("train", 4), ("validation", 3)):
        folder = data / "helmets" / split
        folder.mkdir(parents=True)
        lines = []
        for i in range(count):
            (folder / f"{i}.jpg").write_bytes(jpeg_bytes(128, 96))
            objects = {"bbox": [[10.0 + 5 * i, 20.0, 40.0, 30.0]], "categories": [i % 2]}
            lines.append(json.dumps({"file_name": f"{i}.jpg", "objects": objects}))
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    names = "".join(f"  {c}: {name}\n" for c, name in enumerate(OWN_CLASSES))
    (yolo / "data.yaml").write_text(
        f"path: .\ntrain: images/train\nval: images/val\nnames:\n{names}"
    )


def as_typed(line: str, ws: Path, run: Path | None) -> tuple[str, list[str]]:
    """A README line -> (script, args) as run here: placeholders filled in, offline forms and,
    for training, the size overrides added."""
    words = shlex.split(line)
    assert words[:2] == ["uv", "run"], line
    script, args = words[2], [w for w in words[3:] if w != "..."]
    checkpoint = f"{run.relative_to(ws)}/checkpoints/last.ckpt" if run else None
    filled = []
    for arg in args:
        if arg.startswith("ckpt_path=") and run:
            arg = f"ckpt_path={checkpoint}"
        if arg.startswith("init_weights=") and arg.endswith(".ckpt") and run:
            arg = f"init_weights={checkpoint}"
        filled.append(arg.replace("=/data/", f"={ws}/data/").replace("/path/", f"{ws}/weights/"))
    if script in readme_files():  # trains through frcnn.fit: its data is its own
        steps = [o for o in SIZE["synthetic"] if not o.startswith("data.")]
        return script, [*filled, *steps, "device=cpu"]
    if script != "train.py":
        return script, filled
    # experiment=coco400 and those built on it (coco400_lsj) stream the hub
    hub = any(a.startswith("experiment=coco400") or a == "data=coco" for a in filled)
    folder = any(a in filled for a in ("data=coco_files", "data=yolo", "data=voc", "data=hub"))
    extra = list(SIZE["coco" if hub or folder else "synthetic"])
    counted = ("experiment=coco400", "trainer.max_steps=")  # the run's steps, given
    if (hub or "data=hub" in filled) and not any(a.startswith(counted) for a in filled):
        # a stream with no steps given refuses to start: fewer steps would hide it
        extra.remove("trainer.max_steps=2")
    coco_weights = "experiment=finetune" in filled or any(
        a == "init_weights=coco" or a.startswith("init_weights=") and TORCHVISION_COCO in a
        for a in filled
    )
    if coco_weights:
        # the model whose tensors torchvision's COCO weights fit (a narrower or shallower one
        # loads less of them), with SMALL_MODEL's proposal and sample counts: sizes, not shapes
        extra = [o for o in extra if not o.startswith(WEIGHT_SHAPES)]
    if hub:
        given = {a.split("=")[0] for a in filled}
        extra += [o.format(ws=ws) for o in LOCAL["hub"] if o.split("=")[0] not in given]
    search = next((a.split("=")[1] for a in filled if a.startswith("hparams_search=")), None)
    if search:
        extra += SWEEP_SIZE[search][0]
    if "device=ddp" in filled:
        extra += ["trainer.accelerator=cpu", "trainer.devices=2"]  # the README's CPU form
    elif not any(a.startswith(("device=", "module.compile=")) for a in filled):
        # (the GPU speed switches run only where there is a GPU: on it, as the README's line)
        extra.append("device=cpu")
    return script, filled + extra


def run_line(line: str, ws: Path, run: Path | None = None, *more: str, separate=False):
    script, args = as_typed(line, ws, run)
    return run_script(ws / script, [*args, *more], ws, separate)


def output(result) -> str:
    return result.stdout + result.stderr


def train_runs(ws: Path) -> list[Path]:
    return sorted((ws / "logs" / "train" / "runs").iterdir())


@pytest.fixture(scope="module")
def coco400_run(workspace):
    """`uv run train.py experiment=coco400` for 1 step (validation at step 1), then the
    README's resume command on its last.ckpt for 1 more (validation at 2): the run folder, and
    what was seen in between."""
    first = run_line(
        readme_line(TRAIN_COCO),
        workspace,
        None,
        "trainer.max_steps=1",
        "trainer.val_check_interval=1",
    )
    (run,) = train_runs(workspace)
    last = run / "checkpoints" / "last.ckpt"
    at_first = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    resumed = run_line(readme_line(RESUME_COCO), workspace, run)
    return run, {"first": output(first), "resumed": output(resumed), "first_step": at_first}


def test_coco400_end_to_end_on_cpu(coco400_run, workspace):
    run, seen = coco400_run
    # last.ckpt of the validation at step 1, although coco400 saves every 1000 steps
    assert seen["first_step"] == 1
    assert "warmup_steps=1000 is longer than the run" in seen["first"]
    assert "milestones at steps 60000, 80000 lie beyond the run" in seen["first"]
    # resumed in the same folder, up to step 2
    assert train_runs(workspace) == [run]
    assert "Resuming in" in seen["resumed"] and "train finished" in seen["resumed"]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2
    final = json.loads((run / "metrics.json").read_text())["metrics"]
    assert {"val/map", "subset/val/map"} <= set(final)  # the whole split after the subset


COMMANDS = [(s, line) for s, line in readme_commands() if not in_chain(line)]


def export_line(name: str) -> str:
    """The README's export command of a training run that writes `name` (model.onnx, ...), which
    a command with model_file=<name> runs."""
    found = [
        line
        for _, line in readme_commands()
        if line.startswith("uv run export.py ckpt_path=logs/") and line.endswith(f"output={name}")
    ]
    assert len(found) == 1, f"the README should have one command that exports {name}: {found}"
    return found[0]


# what each script prints when it has done its job (a pattern)
TOOK = r"finished in (\d+ (h|min) )?\d+ (s|min)\. Outputs: "  # the summary's first line
DONE = {
    "train.py": "train " + TOOK,
    "eval.py": "eval " + TOOK,
    "predict.py": r"\d+ detections? -> ",  # (images and videos; one detection is singular)
    "export.py": r"\(CPU\) against PyTorch on",
    "visualize.py": "Wrote",
}


# observers added to the DDP command: the image ids each process trained on
RECORD_IDS = [
    "+callbacks.ids._target_=tests.app.helpers.RecordImageIds",
    "+callbacks.ids.output_dir=${paths.output_dir}",
]
# and to trials side by side: the GPUs each may use, when it trained
RECORD_TRIAL = [
    "+callbacks.trial._target_=tests.app.helpers.RecordTrial",
    "+callbacks.trial.output_dir=${paths.output_dir}",
]


@pytest.mark.parametrize("section, line", COMMANDS, ids=[line[7:60] for _, line in COMMANDS])
def test_readme_command(section, line, workspace, coco400_run, monkeypatch):
    run, _ = coco400_run
    script = shlex.split(line)[2]
    if "module.compile=" in line and not torch.cuda.is_available():
        pytest.skip(
            "a GPU speed switch: compiling takes minutes on a CPU (the compile path is "
            "tested with the eager backend in test_checkpoints)"
        )
    if "hydra/launcher=slurm" in line:
        pytest.skip("needs a SLURM cluster (its sbatch file is checked in test_configs)")
    ddp = "device=ddp" in line  # starts processes of its own
    side_by_side = "hydra/launcher=local_gpus" in line
    if side_by_side:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # what the trials share here
        monkeypatch.delenv(TRIAL_GPUS, raising=False)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two trials on two cores: a thread each
    observers = RECORD_IDS if ddp else RECORD_TRIAL if side_by_side else []
    exported = re.search(r"model_file=(\S+)", line)
    if exported and not (workspace / exported.group(1)).exists():
        # the README's export command writes it first
        run_line(export_line(exported.group(1)), workspace, run)
    before = set((workspace / "logs").glob("*/*runs/*"))
    result = run_line(line, workspace, run, *observers, separate=ddp)
    made = set((workspace / "logs").glob("*/*runs/*")) - before  # new run or sweep folders
    printed = output(result)
    if side_by_side:  # and what each trial's process printed
        (sweep,) = made
        printed += "".join(p.read_text() for p in sweep.glob(".submitit/*/*.out"))
    done = "debug " + TOOK if "debug=" in line else DONE.get(script, DONE["train.py"])
    if "--help" in line:  # (its page: test_settings)
        done = r"^== Settings \(key=value; nested: a\.b=value\): conf/\w+\.yaml ==$"
    assert re.search(done, printed, re.M), printed[-3000:]
    assert "💡 Tip" not in printed  # Lightning's advertisement
    assert not library_warnings(printed), library_warnings(printed)
    assert "Validate metric" not in printed  # Lightning's table: the summary gives the figures
    if "debug=" in line:  # a folder apart from the real runs
        assert made and all(path.parts[-3] == "debug" for path in made), made
    if "init_weights=coco" in line or "experiment=finetune" in line:  # from torch's cache
        assert "init_weights=coco: torchvision's Faster R-CNN COCO weights." in printed
    if ("init_weights=" in line or "experiment=finetune" in line) and "coco400" not in line:
        # a user's classes: those COCO has (person, car) keep their rows
        assert "carried over by class name: background, person, car; new classes" in printed
    if "data.name=/data/helmets" in line:  # images read from their files, every one scored
        assert "val/images" + " " * 12 + "3\n" in printed and "| helmet |" in printed, printed[
            -3000:
        ]
    if " -m " in line or "hparams_search=" in line:
        (sweep,) = made
        check_sweep(line, sweep, output(result))
    if side_by_side:
        check_side_by_side(sweep)
    if ddp:
        (run,) = made
        check_ddp(run, output(result), workspace)


# warnings of this machine's, not of the README's lines: a GPU run's precision on the CPU that
# device=cpu gives it here, DataLoader workers (data.num_workers=2) beyond a CPU's cores
MACHINE_WARNINGS = ("AMP with fp16 is not supported on CPU",)


def library_warnings(printed: str) -> list[str]:
    """The Python warnings (`<file>:<line>: <category>: <message>`) in a command's output, but
    this machine's. The project's own warnings are log lines; a library's that a user can do
    nothing about the commands filter (app.build.quiet_libraries)."""
    warned = re.findall(r"^\S+:\d+: \w*Warning: .*$", printed, re.M)
    return [w for w in warned if not any(m in w for m in MACHINE_WARNINGS)]


def check_sweep(line: str, sweep: Path, printed: str) -> None:
    """One summary row per run of the grid, every run finished."""
    grids = [a.split("=", 1)[1].split(",") for a in shlex.split(line) if "," in a]
    search = re.search(r"hparams_search=(\w+)", line)
    runs = SWEEP_SIZE[search.group(1)][1] if search else len(list(itertools.product(*grids)))
    assert f"Sweep summary ({counted(runs, 'run')}, sorted by" in printed, printed[-3000:]
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert len(rows) == runs and {row["status"] for row in rows} == {"ok"}
    assert all(float(row["seconds"]) > 0 for row in rows)  # how long each run took


def check_side_by_side(sweep: Path) -> None:
    """Two trials at once, each in its own process with its own GPU."""
    trials = [json.loads((sweep / str(n) / "trial.json").read_text()) for n in range(2)]
    assert [t["gpus"] for t in trials] == ["0", "1"]
    assert max(t["start"] for t in trials) < min(t["end"] for t in trials)
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2


def check_ddp(run: Path, printed: str, ws: Path) -> None:
    """Both processes in one run folder, each on its own part of the stream (7 images in 4
    shards of 2, 2, 2 and 1: two shards each, a shard per DataLoader worker, so 2 full batches
    on one process and 1 on the other; the epoch ends for both at the batches both have); one
    summary; the validation figures cover every readable image once (6 of 7, shared 4 + 2 by
    the processes) and equal one process's on the same images."""
    ids = [json.loads((run / f"ids_rank{rank}.json").read_text()) for rank in range(2)]
    # epoch 0 ends after the one batch both have (the other's single image makes no full
    # batch), then step 2 in epoch 1: one process's second batch is not trained on in epoch 0
    assert list(map(len, ids)) == [4, 4]
    assert set(ids[0][:2]).isdisjoint(ids[1][:2])  # epoch 0: each its own part
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert printed.count("train finished") == 1 and printed.count("Learning rate") == 1
    assert "sync_dist=True" not in printed  # the validation figures are gathered already
    final = json.loads((run / "metrics.json").read_text())["metrics"]
    assert final["val/images"] == 6 and isinstance(final["val/images"], int)  # a count, whole
    (best,) = (run / "checkpoints").glob("epoch*.ckpt")
    run_script(ws / "eval.py", [f"ckpt_path={best}", "device=cpu"], ws)
    alone = json.loads((latest(ws / "logs" / "eval" / "runs") / "metrics.json").read_text())
    assert alone["metrics"]["val/images"] == 6
    for key in ("val/map", "val/map_50", "val/mar_100"):  # (the losses sample at random)
        assert alone["metrics"][key] == pytest.approx(final[key], abs=1e-4), key


def latest(folder: Path) -> Path:
    return max(folder.iterdir(), key=lambda p: p.stat().st_mtime)


# the README's python examples that run elsewhere: the scripts a user writes (`# my_data.py`)
# run as commands, above; the deploy section's numpy and OpenVINO ones on test_export.py's files
EXAMPLES_ELSEWHERE = ("## Training on your own data", "### ONNX", "### OpenVINO")


def example(heading: str, **given) -> dict:
    """The README's python block under `heading`, run here (in the current folder), with what
    its text leaves to the reader (`paths`, `images`) given -> the names it defined."""
    namespace = dict(given)
    exec(readme_blocks()[heading], namespace)
    return namespace


def test_every_python_example_of_the_readme_is_run():
    here = {
        "## The detector in Python",
        "### Starting from torchvision's COCO weights",
        "## Predicting on your images",
        "## Data",
        "### A PyTorch package: torch.export and AOTInductor",
    }  # (the tests below)
    assert set(readme_blocks()) == here | set(EXAMPLES_ELSEWHERE)


def test_the_detector_in_python(workspace, monkeypatch):
    """The detector's API on the model the README layer trains (SIZE's ResNet-18 and counts:
    sizes, not code paths), its ImageNet weights read from torch's download cache."""
    full = frcnn.model.FasterRCNN
    sizes = [o.removeprefix("model.") for o in SIZE["coco"] if o.startswith("model.")]

    def smaller(**settings):
        merged = OmegaConf.merge(settings, OmegaConf.from_dotlist(sizes))
        return full(**OmegaConf.to_container(merged))

    monkeypatch.setattr(frcnn.model, "FasterRCNN", smaller)
    done = example("## The detector in Python")
    assert set(done["losses"]) == {"rpn_cls", "rpn_box", "roi_cls", "roi_box"}
    assert [sorted(d) for d in done["detections"]] == [["boxes", "labels", "scores"]] * 2
    assert (done["detections"][1]["boxes"][:, 1::2] <= 300).all()  # the list's second image
    assert done["padded"].boxes.shape == (2, 100, 4)


def test_starting_from_torchvisions_coco_weights(workspace):
    """torchvision's weights="DEFAULT" read from torch's download cache, as after a download."""
    assert example("### Starting from torchvision's COCO weights")["model"].num_classes == 90


def test_predicting_from_python(workspace, coco400_run, tmp_path, monkeypatch):
    """`last.ckpt` and `photo.jpg` are the coco400 run's checkpoint and a photo, `paths` and
    `photos/` two."""
    run, _ = coco400_run
    (tmp_path / "last.ckpt").hardlink_to(run / "checkpoints" / "last.ckpt")
    (tmp_path / "photo.jpg").hardlink_to(workspace / "photos" / "0.jpg")
    (tmp_path / "photos").symlink_to(workspace / "photos")
    monkeypatch.chdir(tmp_path)
    paths = [str(p) for p in sorted((workspace / "photos").glob("*.jpg"))]
    done = example("## Predicting on your images", paths=paths)
    assert sorted(done["result"]) == ["boxes", "labels", "names", "scores"]
    assert len(done["results"]) == len(paths) == 2


def test_reading_coco_from_python(workspace, monkeypatch):
    """HubCOCO in the README's offline form (the local parquet copy, LOCAL), one batch read."""
    (val_files,) = [o.split("=")[1] for o in LOCAL["hub"] if o.startswith("data.val.")]
    hub_coco = functools.partial(frcnn.data.HubCOCO, data_files=val_files.format(ws=workspace))
    monkeypatch.setattr(frcnn.data, "HubCOCO", hub_coco)
    batch = next(iter(example("## Data")["loader"]))
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape[1:] == (3, 400, 400)


def test_running_a_pt2_package_from_python(workspace, coco400_run, monkeypatch):
    """The package the README's export command builds (model.pt2), on two images of its size."""
    run, _ = coco400_run
    if not (workspace / "model.pt2").exists():
        run_line(export_line("model.pt2"), workspace, run)
    monkeypatch.chdir(workspace)
    checkpoint = torch.load(
        run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    size = checkpoint["config"]["data"]["image_size"]
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    image_sizes = torch.tensor([[size, size], [size // 2, size]])
    done = example("### A PyTorch package: torch.export and AOTInductor", images=images,
                   image_sizes=image_sizes)  # fmt: skip
    assert done["size"] == size and done["names"] == checkpoint["class_names"]
    assert done["boxes"].shape[0] == done["num_detections"].shape[0] == 2


def test_every_section_of_the_readme_that_shows_commands_is_run():
    sections = {section for section, _ in readme_commands()}
    expected = {
        "Quickstart",
        "Training on COCO",
        "Sweeps",
        "Evaluating a checkpoint",
        "Predicting on your images",
        "Deploying",
        "Look inside",
        "Configuration",
    }
    assert expected <= sections


def test_the_workspace_holds_what_a_clone_of_the_checkout_holds(tmp_path):
    """checkout_files: git's tracked and new files, not what .gitignore keeps out (a data set,
    an environment, runs); outside a git checkout, all but the environment's files."""
    root = tmp_path / "checkout"
    files = ["src/a.py", "new.md", ".gitignore", "data/coco.json", ".venv/lib.py", "logs/run.log"]
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    (root / ".gitignore").write_text("/data/\n.venv/\nlogs/\n")
    unpacked = [".gitignore", "data/coco.json", "logs/run.log", "new.md", "src/a.py"]
    assert sorted(checkout_files(root)) == unpacked
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "src/a.py", ".gitignore"], cwd=root, check=True)
    assert sorted(checkout_files(root)) == [".gitignore", "new.md", "src/a.py"]


def test_a_ddp_sweep_on_a_coco_folder_runs_each_run_in_its_folder_on_every_image_once(
    workspace,
):
    """`-m ... device=ddp` over a COCO folder: Lightning starts each run's second process with
    that run's own overrides in its folder (not the whole sweep again, in new folders), and the
    3 validation images go 2 + 1 over the processes, not 2 + 2 with one image twice (what
    Lightning's DistributedSampler does to even them out)."""
    args = [
        "-m",
        "model.rpn.nms_thresh=0.6,0.7",
        "data=coco_files",
        "data.num_classes=3",
        "data.image_size=64",
        "data.batch_size=2",
        "data.num_workers=0",
        "model.backbone.depth=18",
        *SMALL_MODEL,
        "trainer.max_epochs=1",
        "device=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
    ]
    before = set((workspace / "logs" / "train").glob("*/*"))
    result = run_script(workspace / "train.py", args, workspace, separate_process=True)
    (sweep,) = set((workspace / "logs" / "train").glob("*/*")) - before  # no run folders
    # a start-up warning once per run, not once per process
    assert (result.stdout + result.stderr).count("warmup_steps=50 is longer than the run") == 2
    assert sweep.parent.name == "multiruns"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for run in (sweep / "0", sweep / "1"):
        assert (run / "train_ddp_process_1.log").is_file()  # rank 1 ran here
        final = json.loads((run / "metrics.json").read_text())["metrics"]
        assert final["val/images"] == 3
