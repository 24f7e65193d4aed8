"""export.py: the detector as one ONNX graph or AOTInductor package, run by its runtime with the
same detections."""

import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from frcnn.app.export import check_quantize
from frcnn.data.synthetic import draw_sample
from frcnn.data.transforms import resize
from frcnn.inference import onnx_graph
from frcnn.inference.detector_graph import OUTPUTS, check, compare, metadata
from frcnn.inference.onnx_graph import export_onnx
from frcnn.inference.predictor import Predictor, open_image
from frcnn.inference.pt2_package import vector_isas
from tests.app.helpers import readme_blocks, run
from tests.helpers import OVERFIT_SIZE
from tests.inference.helpers import one_detection_short


def real_size_batch(predictor: Predictor, count: int, num_classes: int, seed: int = 3):
    """`count` synthetic images of 240-640 px (real photo sizes), letterboxed as `predictor`
    does it -> images (count, 3, S, S), content sizes (count, 2)."""
    images = [draw_sample(seed, i, num_classes, 240, 640).image for i in range(count)]
    return predictor.batch(images)[:2]


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """export.py run on the best checkpoint of the train.py run -> (checkpoint, file, output)."""
    log_dir, run_dir = trained
    checkpoint = next((run_dir / "checkpoints").glob("epoch*.ckpt"))
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    result = run("export.py", f"ckpt_path={checkpoint}", f"output={path}", log_dir=log_dir)
    return checkpoint, path, result.stdout + result.stderr


def test_export_py_checks_batch_1_and_4_and_describes_the_graph(exported):
    checkpoint, path, output = exported
    verdicts = re.findall(r"batch (\d), image (\d): .*: (\w+)", output)
    assert sorted(verdicts) == [("1", "0", "same")] + [("4", str(i), "same") for i in range(4)]
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    saved = torch.load(checkpoint, weights_only=True)
    assert json.loads(meta["class_names"]) == saved["class_names"]
    assert json.loads(meta["category_ids"]) == saved["category_ids"]
    assert int(meta["image_size"]) == saved["config"]["data"]["image_size"]
    # a runtime needs nothing but standard ONNX operators
    ops = {node.op_type for node in proto.graph.node}
    assert {"NonMaxSuppression", "RoiAlign"} <= ops
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}
    assert [i.name for i in proto.graph.input] == ["images", "image_sizes"]
    assert [o.name for o in proto.graph.output] == [
        "boxes",
        "scores",
        "labels",
        "num_detections",
    ]


def test_the_graph_takes_any_batch_size(exported):
    checkpoint, path, _ = exported
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    images, sizes = real_size_batch(predictor, 3, 6, seed=7)  # 3: neither batch of the check
    reports = check(onnx_graph.load(path)[0], predictor.model, images, sizes)
    assert [r["batch"] for r in reports] == [1, 3, 3, 3]
    assert all(r["ok"] for r in reports), reports


def test_a_detector_that_detects_exports_with_the_same_detections(overfit_detector, tmp_path):
    model, data, _, _ = overfit_detector
    path = tmp_path / "model.onnx"
    info = metadata(OVERFIT_SIZE, "letterbox", data.class_names, data.category_ids)
    export_onnx(model, path, OVERFIT_SIZE, 17, info)
    assert not model.training  # the export leaves the model to detect, not to train
    images, sizes = real_size_batch(Predictor(model, OVERFIT_SIZE, device="cpu"), 4, 3)
    reports = check(onnx_graph.load(path)[0], model, images, sizes)
    assert all(r["ok"] for r in reports), reports
    with torch.no_grad():
        detections = model.eval()(images, image_sizes=sizes)
    confident = [int((d["scores"] > 0.5).sum()) for d in detections]
    assert min(confident) >= 1  # real detections, not just low-score noise


def test_the_readme_numpy_example_gives_predict_py_detections(exported, tmp_path, monkeypatch):
    """The example's letterbox, feed and box mapping give predict.py's detections, given the
    same pixels: its PIL resize takes the transform's here (the two resizes agree within one
    grey level, tests/data/test_transforms.py; a random model's crowd of near-equal low
    scores would reorder on that), and the predictor gets the example's whole decode (from
    the file it decodes a JPEG this large smaller: `Transform.reduction`)."""
    checkpoint, path, _ = exported
    namespace = {}
    exec(readme_blocks()["### ONNX"].replace('"model.onnx"', repr(str(path))), namespace)
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    files = [tmp_path / f"{index}.jpg" for index in range(2)]
    for index, (file, size) in enumerate(zip(files, [(640, 300), (280, 500)], strict=True)):
        draw_sample(4, index, 6, 240, 640).image.resize(size).save(file)

    def transform_resize(image, size, resample):
        assert resample == Image.BILINEAR
        return Image.fromarray(resize(image, size[1], size[0]).permute(1, 2, 0).numpy())

    monkeypatch.setattr(Image.Image, "resize", transform_resize)
    for file in files:
        boxes, scores, names = namespace["detect"](file)
        assert predictor.transform.reduction(*Image.open(file).size) > 1
        expected = predictor(open_image(file))
        assert boxes.max() > 96  # in the photo's pixels, not the 96-px input's
        actual = {
            "boxes": np.asarray(boxes, dtype=np.float32),
            "scores": scores,
            "labels": np.array([predictor.class_names.index(n) + 1 for n in names]),
            "num_detections": np.int64(len(names)),
        }
        report = compare(expected, actual, max(Image.open(file).size))
        assert report["ok"] and report["count"] > 0, report


def test_compare_pairs_detections_by_label_and_box():
    expected = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]),
        "scores": torch.tensor([0.9, 0.9]),
        "labels": torch.tensor([1, 2]),
    }

    def actual(boxes, scores, labels, count=2):
        return {
            "boxes": np.array(boxes, np.float32),
            "scores": np.array(scores, np.float32),
            "labels": np.array(labels),
            "num_detections": np.int64(count),
        }

    # the same detections in the other order (equal scores): same
    swapped = actual([[20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]], [0.9, 0.9], [2, 1])
    assert compare(expected, swapped, 96)["ok"]
    # boxes within 0.01 px + 1e-4 of the input's side: 0.0196 px at 96 px, 0.09 px at 800 px
    off = actual([[0.0, 0.0, 10.02, 10.0], [20.0, 20.0, 30.0, 30.0]], [0.9, 0.9], [1, 2])
    assert compare(expected, off, 96)["box_diff"] == pytest.approx(0.02, abs=1e-5)
    assert not compare(expected, off, 96)["ok"]
    assert compare(expected, off, 800)["ok"]
    off = actual([[0.0, 0.0, 10.1, 10.0], [20.0, 20.0, 30.0, 30.0]], [0.9, 0.9], [1, 2])
    assert not compare(expected, off, 800)["ok"]
    wrong_label = actual([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]], [0.9, 0.9], [2, 1])
    assert not compare(expected, wrong_label, 96)["ok"]
    score = actual([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]], [0.9, 0.9002], [1, 2])
    assert compare(expected, score, 96)["ok"]
    score = actual([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]], [0.9, 0.9004], [1, 2])
    assert not compare(expected, score, 96)["ok"]
    one = actual([[0.0, 0.0, 10.0, 10.0]], [0.9], [1], count=1)
    assert not compare(expected, one, 96)["ok"]


def test_calibration_takes_the_first_images_and_says_when_the_data_has_fewer(caplog):
    from frcnn.app.export import calibration_batches

    def batch(first, size):  # images numbered first.. in their pixels, sizes beside them
        images = torch.arange(first, first + size, dtype=torch.uint8).view(-1, 1, 1, 1)
        return {"images": images.expand(-1, 3, 2, 2), "image_sizes": torch.full((size, 2), 2)}

    loader = [batch(0, 3), batch(3, 3), batch(6, 2)]
    caplog.set_level("INFO", logger="frcnn.app.export")
    taken = calibration_batches(loader, 4)
    assert [images[:, 0, 0, 0].tolist() for images, _ in taken] == [[0, 1, 2], [3]]
    assert [sizes.shape for _, sizes in taken] == [(3, 2), (1, 2)]
    assert "calibrated on 4 training images..." in caplog.text
    taken = calibration_batches(loader, 32)
    assert sum(len(images) for images, _ in taken) == 8
    assert "calibrated on 8 training images (all the data has; calibration_images=32)" in (
        caplog.text
    )


@pytest.mark.parametrize(
    ("calibration_images", "told"),
    [
        (0, r"^calibration_images=0: must lie in \[1, inf\)$"),
        (True, r"^calibration_images=True: must be an integer in \[1, inf\)$"),  # (1 before)
    ],
)
def test_int8_settings_are_checked_before_anything_is_loaded(calibration_images, told):
    settings = {"quantize": "int8", "format": "onnx", "max_map_drop": 0.01}
    with pytest.raises(ValueError, match=told):
        check_quantize(OmegaConf.create(settings | {"calibration_images": calibration_images}))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("opset=9", r"opset=9: the graph needs ONNX opset 11\.\.20"),
        ("opset=21", r"opset=21: the graph needs ONNX opset 11\.\.20"),
        ("output={tmp}/notes.txt/model.onnx", "cannot be created"),
        ("output={tmp}", "is a folder"),
        ("format=pt3", r"format='pt3': one of onnx, openvino, pt2"),
        ("format=pt2 output={tmp}/model.onnx", r"a pt2 file's name ends in \.pt2"),
        ("format=openvino output={tmp}/model.onnx", r"an? openvino file's name ends in \.xml"),
        ("format=pt2 quantize=int8 output={tmp}/m.pt2", r"quantize=int8: format=onnx or openvino"),
        (
            "format=pt2 pt2_cpu=x86-64-v9 output={tmp}/m.pt2",
            r"pt2_cpu='x86-64-v9': one of native, x86-64-v3",
        ),
        (
            "pt2_cpu=x86-64-v3",
            r"pt2_cpu=x86-64-v3: the CPUs a format=pt2 package is built for; "
            r"this export is format=onnx",
        ),
        ("quantize=int4", r"quantize='int4': null \(float32\) or int8"),
        ("quantize=int8 max_map_drop=5", r"max_map_drop=5: the mAP int8 may cost, 0..1"),
        ("ckpt_path={tmp}/notes.txt", "not a checkpoint of this project"),
        # named as given, not as the model's keys (model.roi_heads.detections_per_img=0)
        ("max_detections=0", r": max_detections=0: must lie in \[1, inf\)"),
        ("score_thresh=1", r": score_thresh=1: must lie in \[0, 1\)"),
        ("check_images=0", r"check_images=0: a file, folder or glob of images, up to 4"),
    ],
)
def test_bad_input_is_refused_with_a_message_naming_it(trained, tmp_path, override, message):
    log_dir, run_dir = trained
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    args = [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"output={tmp_path}/m.onnx"]
    given = override.format(tmp=tmp_path).split()
    keys = tuple(f"{o.split('=')[0]}=" for o in given)
    args = [a for a in args if not a.startswith(keys)] + given
    with pytest.raises(AssertionError, match=message):
        run("export.py", *args, log_dir=log_dir)
    assert not (tmp_path / "m.onnx").exists()


def test_a_file_is_written_only_once_checked(trained, tmp_path, monkeypatch):
    """A corrupt check image stops the export before it starts, a failed check after it: no
    unchecked .onnx either way, and the file an earlier export wrote stays as it was. The
    failure says whether float32's rounding can explain it: PyTorch against itself with its
    weights moved by one part in a million (real draws: a trained model's detections stay in
    all 8; then draws made to fail on that image from the third on: 3 draws, then no more)."""
    import frcnn.inference.detector_graph

    log_dir, run_dir = trained
    path = tmp_path / "m.onnx"
    path.write_bytes(b"an earlier, checked export")
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (64, 48)).save(tmp_path / "photos" / "a.png")
    (tmp_path / "photos" / "b.jpg").write_bytes(b"\xff\xd8 truncated")
    args = [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"output={path}"]
    with pytest.raises(AssertionError, match=r"check_images: .*b.jpg cannot be read"):
        run("export.py", *args, f"check_images={tmp_path / 'photos'}", log_dir=log_dir)
    monkeypatch.setattr(onnx_graph, "load", one_detection_short(onnx_graph.load))
    with pytest.raises(AssertionError) as failed:
        run("export.py", *args, log_dir=log_dir)
    runtime_s = (
        r"differ from PyTorch's .*m.onnx was not written. PyTorch with its weights moved by one "
        r"part in a million detects the same on image 0 \(batch 1\), .* in all 8 draws: the "
        r"difference is most likely the runtime's"
    )
    assert re.search(runtime_s, str(failed.value)), str(failed.value)

    draws = []

    def failing_from_the_third_draw(model, images, image_sizes, seed, expected):  # near a cut
        draws.append(seed)
        ok = seed < 2
        return [{"batch": b, "image": i, "ok": ok} for b in (1, len(images)) for i in range(b)]

    monkeypatch.setattr(frcnn.inference.detector_graph, "noise_check", failing_from_the_third_draw)
    float32_s = (
        r"m.onnx was not written. PyTorch itself detects otherwise on image 0 \(batch 1\), "
        r".* one part in a million \(3 draws\): .*check_images= other images"
    )
    with pytest.raises(AssertionError, match=float32_s):
        run("export.py", *args, log_dir=log_dir)
    assert draws == [0, 1, 2]  # no draw after every failed image has failed in one
    assert path.read_bytes() == b"an earlier, checked export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "photos"]  # no temporary


def test_int8_is_measured_on_the_validation_data_and_refused_past_max_map_drop(
    trained, tmp_path, monkeypatch
):
    """export.py quantize=int8 (format=onnx, then openvino): the float graph checked against
    PyTorch, the int8 one measured against it on the checkpoint's validation images (the
    demo's 4), written as model.int8.onnx / model.int8.xml + .bin to the run's folder; a
    drop past max_map_drop is refused with its figures, and nothing is written."""
    from frcnn.inference import quantize

    log_dir, run_dir = trained
    args = [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "quantize=int8"]
    result = run("export.py", *args, "calibration_images=4", log_dir=log_dir)
    printed = result.stdout + result.stderr
    assert "onnxruntime (CPU) against PyTorch on 4 images" in printed
    assert "calibrated on 4 training images..." in printed
    measured = re.search(
        r"validation data \((\d+) images\).*int8 costs (-?[\d.]+) mAP", printed, re.S
    )
    assert measured and int(measured.group(1)) > 0, printed[-2000:]
    (written,) = (log_dir / "export" / "runs").glob("*/model.int8.onnx")
    ops = {node.op_type for node in onnx.load(str(written)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "NonMaxSuppression"} <= ops
    # in a process of its own: after OpenVINO ran an int8 graph in a test process, a later test
    # that forked it or raised SIGTERM in it took the process down (seen twice, 2026-12-04)
    run("export.py", *args, "format=openvino", "calibration_images=2", log_dir=log_dir,
        separate_process=True)  # fmt: skip
    assert len(list((log_dir / "export" / "runs").glob("*/model.int8.[xb]*"))) == 2

    real = quantize.mean_ap

    def costly(runs, batches):  # as if int8 lost 0.02 mAP
        found = real(runs, batches)
        found["int8"]["map"] = found["float32"]["map"] - 0.02
        return found

    monkeypatch.setattr(quantize, "mean_ap", costly)
    path = tmp_path / "m.onnx"
    with pytest.raises(
        AssertionError, match=r"int8 costs 0.0200 mAP .*max_map_drop=0.01: .*m.onnx"
    ):
        run("export.py", *args, "calibration_images=2", f"output={path}", log_dir=log_dir)
    assert list(tmp_path.iterdir()) == []  # no file, no temporary


# what a deployment runs: torch and torchvision, in an isolated Python (no project on its path,
# no user site), from a folder of its own
STANDALONE = """
import json, sys
import torch, torchvision
package = torch._inductor.aoti_load_package(sys.argv[1])
images, sizes = torch.load(sys.argv[2])
outputs = package(images, sizes)
torch.save([o.clone() for o in outputs], sys.argv[3])
print(json.dumps(package.get_metadata()))
"""


def disassembled(package: Path) -> str:
    """The package's compiled code, disassembled by objdump (skips the test without it)."""
    if shutil.which("objdump") is None:
        pytest.skip("needs objdump (binutils)")
    with zipfile.ZipFile(package) as archive:
        (library,) = [name for name in archive.namelist() if name.endswith(".so")]
        code = archive.read(library)
    with tempfile.NamedTemporaryFile(suffix=".so") as file:
        file.write(code)
        file.flush()
        return subprocess.run(
            ["objdump", "-d", "--no-show-raw-insn", file.name],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip


@pytest.fixture(scope="module")
def openvino_ir(exported, trained):
    """export.py format=openvino run on the ONNX file's checkpoint, to its default output ->
    (checkpoint, model.xml, output)."""
    log_dir, _ = trained
    checkpoint = exported[0]
    result = run("export.py", f"ckpt_path={checkpoint}", "format=openvino", log_dir=log_dir)
    (graph,) = (log_dir / "export" / "runs").glob("*/model.xml")
    return checkpoint, graph, result.stdout + result.stderr


def test_openvino_ir_is_checked_and_holds_the_metadata(openvino_ir, tmp_path, monkeypatch):
    """export.py format=openvino: model.xml and model.bin, no temporary left, checked like the
    ONNX file (batch 1 and 4); the README's OpenVINO example reads the checkpoint's settings
    from it and runs it on a batch of 3 (neither of the check's) with PyTorch's detections."""
    checkpoint, graph, printed = openvino_ir
    verdicts = re.findall(r"batch (\d), image (\d): .*: (\w+)", printed)
    assert sorted(verdicts) == [("1", "0", "same")] + [("4", str(i), "same") for i in range(4)]
    assert "OpenVINO (CPU) against PyTorch on 4 images" in printed
    assert sorted(p.name for p in graph.parent.glob("model*")) == ["model.bin", "model.xml"]
    assert not list(graph.parent.glob(".*tmp*"))
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    images, sizes = real_size_batch(predictor, 3, 6, seed=7)
    monkeypatch.chdir(graph.parent)
    namespace = {"images": images.numpy(), "image_sizes": sizes.numpy()}
    exec(readme_blocks()["### OpenVINO"], namespace)
    saved = torch.load(checkpoint, weights_only=True)
    assert namespace["names"] == saved["class_names"]
    assert namespace["size"] == saved["config"]["data"]["image_size"]
    outputs = namespace["outputs"]
    with torch.no_grad():
        expected = predictor.model(images, image_sizes=sizes)
    assert sum(len(e["scores"]) for e in expected) > 0
    for i, detections in enumerate(expected):
        report = compare(
            detections, {name: outputs[name][i] for name in OUTPUTS}, predictor.transform.size
        )
        assert report["ok"], report


@pytest.fixture(scope="module")
def packaged(exported, trained):
    """export.py format=pt2 pt2_cpu=<cpu> run on the ONNX file's checkpoint, to its default
    output -> (checkpoint, package, output, cpu). The package is built for any AVX2 CPU (the
    README's export command builds for this one's) where this is one: asked here, not when the
    module is collected, as the answer compiles a test program per instruction set (7 s with
    Inductor's cache empty, as on a CI machine, in every test process that collects it)."""
    log_dir, _ = trained
    checkpoint = exported[0]
    cpu = "x86-64-v3" if "AVX2" in vector_isas() else "native"
    result = run("export.py", f"ckpt_path={checkpoint}", "format=pt2", f"pt2_cpu={cpu}",
                 log_dir=log_dir)  # fmt: skip
    (package,) = (log_dir / "export" / "runs").glob("*/model.pt2")
    return checkpoint, package, result.stdout + result.stderr, cpu


def test_a_pt2_package_runs_without_the_project_with_the_same_detections(packaged, tmp_path):
    """export.py format=pt2: checked like the ONNX file (batch 1 and 4), then loaded by
    `aoti_load_package` in a Python with torch and torchvision only, on a batch of 3 (neither
    of the check's): PyTorch's detections, and the checkpoint's settings in its metadata."""
    checkpoint, package, printed, cpu = packaged
    verdicts = re.findall(r"batch (\d), image (\d): .*: (\w+)", printed)
    assert sorted(verdicts) == [("1", "0", "same")] + [("4", str(i), "same") for i in range(4)]
    assert "AOTInductor (CPU) against PyTorch on 4 images" in printed
    assert "mismatch" not in printed  # (torch's, of a package narrower than this CPU)
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    images, sizes = real_size_batch(predictor, 3, 6, seed=7)
    torch.save((images, sizes), tmp_path / "inputs.pt")
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    ran = subprocess.run(
        [sys.executable, "-I", "-c", STANDALONE, str(package), "../inputs.pt", "../outputs.pt"],
        cwd=folder, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    meta = json.loads(ran.stdout.strip().splitlines()[-1])
    saved = torch.load(checkpoint, weights_only=True)
    assert json.loads(meta["class_names"]) == saved["class_names"]
    assert meta["cpu"] == cpu
    if cpu == "x86-64-v3":  # AVX2's 256-bit registers, none of AVX-512's
        assert meta["AOTI_CPU_ISA"] == "AVX2"
        # the vector registers its instructions use (AT&T syntax: %ymm0): not the words of
        # symbol names, whose hashes may spell "zmm"
        registers = set(re.findall(r"%([xyz]mm)\d+", disassembled(package)))
        assert "ymm" in registers and "zmm" not in registers, registers
    assert int(meta["image_size"]) == saved["config"]["data"]["image_size"]
    outputs = dict(zip(OUTPUTS, torch.load(tmp_path / "outputs.pt"), strict=True))
    with torch.no_grad():
        expected = predictor.model(images, image_sizes=sizes)
    assert sum(len(e["scores"]) for e in expected) > 0
    for i, detections in enumerate(expected):
        report = compare(
            detections, {k: v[i].numpy() for k, v in outputs.items()}, predictor.transform.size
        )
        assert report["ok"], report


def test_predict_py_gives_the_same_detections_from_every_backend(
    exported, openvino_ir, packaged, trained, tmp_path
):
    """predict.py on the checkpoint (backend=torch), its ONNX file, OpenVINO IR and pt2
    package: the same pictures and the same detections.json (up to its rounding: 0.01 px,
    1e-5)."""
    log_dir, _ = trained
    checkpoint, onnx_file, _ = exported
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index, size in enumerate([(640, 300), (280, 500), (400, 400)]):
        draw_sample(5, index, 6, 240, 640).image.resize(size).save(inputs / f"{index}.jpg")
    sources = {
        "torch": [f"ckpt_path={checkpoint}"],
        "onnxruntime": ["backend=onnxruntime", f"model_file={onnx_file}"],
        "openvino": ["backend=openvino", f"model_file={openvino_ir[1]}"],
        "pt2": ["backend=pt2", f"model_file={packaged[1]}"],
    }
    found = {}
    for backend, args in sources.items():
        out = tmp_path / backend
        run("predict.py", *args, f"input={inputs}", f"output={out}", "device=cpu", log_dir=log_dir)
        assert sorted(p.name for p in out.glob("*.jpg")) == ["0.jpg", "1.jpg", "2.jpg"]
        found[backend] = json.loads((out / "detections.json").read_text())
    assert found["torch"]
    for backend in ("onnxruntime", "openvino", "pt2"):
        assert len(found[backend]) == len(found["torch"]), backend
        for wanted in found["torch"]:
            same = [
                r for r in found[backend]
                if (r["image_id"], r["category_id"], r["file_name"], r["picture"])
                == (wanted["image_id"], wanted["category_id"], wanted["file_name"],
                    wanted["picture"])
            ]  # fmt: skip
            nearest = min(same, key=lambda r: box_diff(r["bbox"], wanted["bbox"]))
            assert box_diff(nearest["bbox"], wanted["bbox"]) <= 0.021, (backend, wanted)
            assert abs(nearest["score"] - wanted["score"]) <= 2e-5 + 1e-4, (backend, wanted)


def box_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("backend=pt2", r"backend=pt2 runs an exported file: give model_file="),
        ("model_file={tmp}/m.onnx", r"is an exported file: backend=onnxruntime or openvino or pt2"),
        ("backend=tflite model_file={tmp}/m.onnx", r"backend='tflite': one of torch, onnxruntime"),
        ("backend=onnxruntime model_file={tmp}/m.onnx nms_thresh=0.5", r"nms_thresh: .* baked in"),
        ("backend=onnxruntime model_file={tmp}/missing.onnx", r"missing.onnx'?: no such file"),
    ],
)
def test_predict_py_refuses_what_an_exported_file_cannot_do(tmp_path, override, message):
    (tmp_path / "m.onnx").write_bytes(b"never read")
    (tmp_path / "in.png").write_bytes(b"")
    args = ["input=" + str(tmp_path / "in.png"), *override.format(tmp=tmp_path).split()]
    with pytest.raises(AssertionError, match=message):
        run("predict.py", *args, "device=cpu", log_dir=tmp_path / "logs")
