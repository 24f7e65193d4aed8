"""predict.py and the Predictor."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from faster_coco_eval import COCO
from PIL import Image, UnidentifiedImageError
from torchvision.ops import box_iou

import frcnn.app.predict as predict_app
from frcnn.app import find_images
from frcnn.app.predict import json_array, read_ahead
from frcnn.data.sources import unreadable
from frcnn.data.synthetic import draw_sample
from frcnn.inference.predictor import Predictor, resolve_device
from tests.app.helpers import ROOT, process_env, run, run_dirs
from tests.helpers import OVERFIT_SIZE


def test_predictor_boxes_are_in_original_pixels(overfit_detector):
    model, data, _, _ = overfit_detector
    predictor = Predictor(model, OVERFIT_SIZE, class_names=data.class_names, device="cpu")
    found = total = 0
    for index in range(4):
        record = draw_sample(0, index, 3, max_objects=4)  # objects at known original pixels
        assert max(record.image.size) > 2 * OVERFIT_SIZE  # far from the input size
        detection = predictor(record.image)
        assert detection["names"] == [data.class_names[c - 1] for c in detection["labels"]]
        iou = box_iou(torch.from_numpy(record.boxes), detection["boxes"])
        for row, label in zip(iou, record.labels, strict=True):
            total += 1
            same_class = detection["labels"] == int(label)
            found += bool(((row > 0.7) & same_class).any())
    assert found >= 0.8 * total


def test_predictor_takes_arrays_tensors_and_lists(overfit_detector, tmp_path):
    model, _, _, _ = overfit_detector
    predictor = Predictor(model, OVERFIT_SIZE, device="cpu")
    array = np.array(draw_sample(0, 1, 3, max_objects=4).image)
    from_array = predictor(array)
    from_tensor, again = predictor([torch.from_numpy(array).permute(2, 0, 1), array])
    torch.testing.assert_close(from_array["boxes"], from_tensor["boxes"])
    torch.testing.assert_close(from_array["scores"], again["scores"])
    bgr = np.ascontiguousarray(array[..., ::-1])  # as OpenCV reads an image
    torch.testing.assert_close(predictor(bgr[..., ::-1])["boxes"], from_array["boxes"])
    with pytest.raises(TypeError, match=r"^Predictor: its image is a Tensor torch.float32 \(3,"):
        predictor(torch.from_numpy(array).permute(2, 0, 1) / 255)  # torchvision's floats
    # a long list goes through the model batch_size images at a time, in order
    images = [np.array(draw_sample(0, i, 3, max_objects=4).image) for i in range(5)]
    batches = []
    hook = predictor.model.register_forward_pre_hook(lambda _, args: batches.append(len(args[0])))
    found = predictor(images, batch_size=2)
    hook.remove()
    assert batches == [2, 2, 1] and predictor([]) == []
    for image, detection in zip(images, found, strict=True):
        torch.testing.assert_close(detection["boxes"], predictor(image)["boxes"])
    # files: a list, or an iterator of them (Path.glob's); a folder is not read as one image
    for i, image in enumerate(images[:2]):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    files = predictor(sorted(tmp_path.glob("*.png")), batch_size=1)
    torch.testing.assert_close(files[1]["boxes"], found[1]["boxes"])
    assert len(predictor(tmp_path.glob("*.png"))) == 2
    from_generator = predictor(path for path in sorted(tmp_path.glob("*.png")))
    torch.testing.assert_close(from_generator[0]["boxes"], found[0]["boxes"])
    with pytest.raises(IsADirectoryError, match=r"is a folder: give its images \(a list"):
        predictor(tmp_path)
    with pytest.raises(ValueError, match=r"^batch_size=0: must lie in \[1, inf\)"):
        predictor(images, batch_size=0)


def write_inputs(folder):
    """Two synthetic images of different sizes and one corrupt file."""
    folder.mkdir()
    sizes = {}
    for i in range(2):
        image = draw_sample(5, i, 6).image
        image.save(folder / f"{i}.png")
        sizes[i] = image.size
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return sizes


def test_files_are_read_ahead_in_order_and_detected_as_the_predictor_detects_them(
    overfit_detector, tmp_path
):
    """predict.py's reading threads: 5 files in batches of 2, the third corrupt, come back in
    order, each prepared as the predictor prepares it: detecting those inputs gives the
    predictor's own detections of the files. The last, a large JPEG, is prepared as training
    reads it (decoded smaller) and kept whole for its picture."""
    model, _, _, _ = overfit_detector
    predictor = Predictor(model, OVERFIT_SIZE, device="cpu")
    files = [tmp_path / f"{i}.png" for i in range(4)] + [tmp_path / "4.jpg"]
    for i, file in enumerate(files):
        draw_sample(0, i, 3, max_objects=4).image.save(file)
    draw_sample(0, 4, 3, max_objects=4).image.resize((1920, 1280)).save(files[4], quality=90)
    assert predictor.transform.reduction(1920, 1280) == 8
    files[2].write_bytes(b"\x89PNG not really")
    with ThreadPoolExecutor(3) as pool:
        batches = list(read_ahead(pool, files, [range(0, 2), range(2, 4), range(4, 5)],
                                  predictor.prepare_file))  # fmt: skip
    assert [[read.index for read in batch] for batch in batches] == [[0, 1], [2, 3], [4]]
    reads = [read for batch in batches for read in batch]
    assert [bool(read.problem) for read in reads] == [False, False, True, False, False]
    assert reads[2].problem == f"{files[2]}: " + unreadable(UnidentifiedImageError())
    assert reads[4].image.size == (1920, 1280)
    with Image.open(files[4]) as whole:
        whole.load()  # (decoded whole, as it is drawn)
        assert not torch.equal(reads[4].prepared[0], predictor.prepare(whole)[0])
    assert torch.equal(reads[4].prepared[0], predictor.prepare(files[4].read_bytes())[0])
    readable = [read for read in reads if not read.problem]
    found = predictor.detect([read.prepared for read in readable])
    expected = predictor([files[read.index] for read in readable])
    assert sum(len(detection["scores"]) for detection in found) > 0
    for detection, own in zip(found, expected, strict=True):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(detection[key], own[key])


def test_detections_json_is_written_as_it_grows_and_closed_whatever_stops_it(tmp_path):
    """The file json.dumps would write for the whole list; cut short by an error, a valid
    array of what was written before it."""
    items = [{"image_id": i, "bbox": [1.5, 2, 3, 4], "score": 0.5} for i in range(5)]
    with json_array(tmp_path / "all.json") as write:
        write(items[:2])
        write([])
        write(iter(items[2:]))
    assert (tmp_path / "all.json").read_text() == json.dumps(items)
    with pytest.raises(KeyboardInterrupt), json_array(tmp_path / "cut.json") as write:
        write(items[:3])
        raise KeyboardInterrupt
    assert json.loads((tmp_path / "cut.json").read_text()) == items[:3]
    with json_array(tmp_path / "none.json"):
        pass
    assert json.loads((tmp_path / "none.json").read_text()) == []


def test_predict_py_writes_images_and_coco_results_and_reports_corrupt_files(trained, tmp_path):
    _, run_dir = trained
    sizes = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    result = run(
        "predict.py",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"input={tmp_path / 'in'}",
        f"output={out}",
        "score_thresh=0.01",
        "device=cpu",
        log_dir=tmp_path / "logs",
    )
    assert "1 unreadable file skipped:" in result.stderr + result.stdout
    assert "broken.jpg" in result.stderr + result.stdout
    for i, (width, height) in sizes.items():
        assert Image.open(out / f"{i}.jpg").size == (width, height)
    detections = json.loads((out / "detections.json").read_text())
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    names = dict(zip(checkpoint["category_ids"], checkpoint["class_names"], strict=True))
    assert {d["file_name"] for d in detections} <= {"0.png", "1.png"}
    for d in detections:
        x, y, w, h = d["bbox"]
        width, height = sizes[d["image_id"]]
        assert x >= 0 and y >= 0 and x + w <= width + 0.01 and y + h <= height + 0.01
        assert 1 <= d["category_id"] <= 6 and d["score"] >= 0.01
        assert d["category_name"] == names[d["category_id"]]
    truth = COCO()
    truth.dataset = {
        "images": [{"id": i, "width": w, "height": h} for i, (w, h) in sizes.items()],
        "categories": [{"id": c} for c in range(1, 7)],
        "annotations": [],
    }
    truth.createIndex()
    assert len(truth.loadRes(str(out / "detections.json")).getAnnIds()) == len(detections)
    assert run_dirs(tmp_path / "logs", "predict")


def test_inputs_may_be_a_file_a_folder_or_a_glob(tmp_path):
    write_inputs(tmp_path / "in")
    folder = tmp_path / "in"
    assert [p.name for p in find_images(str(folder))] == ["0.png", "1.png", "broken.jpg"]
    assert [p.name for p in find_images(str(folder / "1.png"))] == ["1.png"]
    assert [p.name for p in find_images(str(folder / "*.png"))] == ["0.png", "1.png"]
    os.mkfifo(folder / "pipe.jpg")  # a named pipe: reading it would wait forever
    (folder / "sub.png").mkdir()
    assert [p.name for p in find_images(str(folder))] == ["0.png", "1.png", "broken.jpg"]
    assert [p.name for p in find_images(str(folder / "*"))] == ["0.png", "1.png", "broken.jpg"]


def test_videos_in_a_folder_of_images_are_named_where_they_are_left_out(tmp_path, caplog):
    """predict.py reads a video given on its own: a folder's videos are not passed over in
    silence, and a folder of videos alone is refused naming one to give (export.py's
    check_images, the setting, with no video to give)."""
    write_inputs(tmp_path / "in")
    for name in ("a.mp4", "b.MOV"):
        (tmp_path / "in" / name).write_bytes(b"(not read)")
    with caplog.at_level("WARNING"):
        assert [p.name for p in find_images(str(tmp_path / "in"))] == [
            "0.png", "1.png", "broken.jpg"
        ]  # fmt: skip
    assert "videos left out (a.mp4, b.MOV): give a video on its own (input=" in caplog.text
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"(not read)")
    with pytest.raises(FileNotFoundError, match=r"no image file; videos left out \(a.mp4\)"):
        find_images(str(tmp_path / "clips"))
    # export.py's check_images: named as such, and no video to give
    with pytest.raises(FileNotFoundError, match=r"^check_images=.*clips': no image file; .*\)$"):
        find_images(str(tmp_path / "clips"), "check_images")


def test_a_folders_subfolders_are_named_where_their_images_are_left_out(
    tmp_path, caplog, monkeypatch
):
    """input=<folder> is the folder's own images: those of its subfolders are counted (among
    their first SUBFOLDER_ENTRIES entries: "or more" past them), with the glob that reads them
    too; a folder whose images are all in subfolders is refused so."""
    write_inputs(tmp_path / "in")
    (tmp_path / "in" / "day2" / "late").mkdir(parents=True)
    for name in ("day2/a.jpg", "day2/late/b.png", "day2/notes.txt"):
        (tmp_path / "in" / name).write_bytes(b"(not read)")
    with caplog.at_level("WARNING"):
        assert len(find_images(str(tmp_path / "in"))) == 3
    pattern = f"{tmp_path}/in/**/*"
    assert f"2 images in its subfolders left out (input='{pattern}' reads them too)" in caplog.text
    assert len(find_images(pattern)) == 5  # (the glob's: the README's form)
    caplog.clear()
    with caplog.at_level("WARNING"), monkeypatch.context() as bounded:
        bounded.setattr(predict_app, "SUBFOLDER_ENTRIES", 7)  # (of the 8 entries below in/)
        find_images(str(tmp_path / "in"))
    assert re.search(r"[12] or more images in its subfolders left out", caplog.text)
    (tmp_path / "scans" / "2024").mkdir(parents=True)
    (tmp_path / "scans" / "2024" / "c.jpg").write_bytes(b"(not read)")
    refused = r"scans/': no image file; 1 image in its subfolders left out \(input='.*/scans/\*\*/"
    with pytest.raises(FileNotFoundError, match=refused):
        find_images(f"{tmp_path}/scans/")


def test_photos_pil_cannot_read_here_are_named_where_they_are_left_out(
    without_the_heic_extra, tmp_path, caplog
):
    """A phone's HEIC photos beside images, without the `heic` extra: named, not passed over;
    a folder of them alone is refused after the same words (the error would say only that it
    holds no image). With the extra they are images (test_transforms, the phone photo)."""
    write_inputs(tmp_path / "in")
    (tmp_path / "in" / "IMG_0001.HEIC").write_bytes(b"(not read)")
    with caplog.at_level("WARNING"):
        assert len(find_images(str(tmp_path / "in"))) == 3
    assert "in': images in formats PIL cannot read here left out (.heic: 1)" in caplog.text
    (tmp_path / "phone").mkdir()
    (tmp_path / "phone" / "IMG_0002.heic").write_bytes(b"(not read)")
    caplog.clear()
    with caplog.at_level("WARNING"), pytest.raises(FileNotFoundError, match="no image file"):
        find_images(str(tmp_path / "phone"))
    assert "(.heic: 1): convert them to JPEG or PNG" in caplog.text


def predict(trained, tmp_path, inputs, *extra):
    _, run_dir = trained
    out = tmp_path / "out"
    result = run(
        "predict.py",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"input={inputs}",
        f"output={out}",
        "device=cpu",
        *extra,
        log_dir=tmp_path / "logs",
    )
    return out, result.stdout + result.stderr


def test_max_image_pixels_reads_larger_images_quietly_and_is_named_where_one_is_too_large(
    trained, tmp_path
):
    """max_image_pixels=10000: a 90 x 100 image (above half the limit, where PIL warns) is read
    without PIL's warning, a 200 x 100 one is skipped with the setting named; PIL's own limit
    is back after the run."""
    folder = tmp_path / "in"
    folder.mkdir()
    draw_sample(5, 0, 6).image.resize((90, 100)).save(folder / "small.png")
    draw_sample(5, 1, 6).image.resize((200, 100)).save(folder / "large.png")
    pils_limit = Image.MAX_IMAGE_PIXELS
    out, printed = predict(trained, tmp_path, folder, "max_image_pixels=10000")
    assert "large.png: DecompressionBombError: Image size (20000 pixels)" in printed
    assert "(max_image_pixels= reads larger images)" in printed
    assert "DecompressionBombWarning" not in printed
    assert sorted(p.name for p in out.glob("*.jpg")) == ["small.jpg"]
    assert pils_limit == Image.MAX_IMAGE_PIXELS


def test_an_output_folder_holding_the_inputs_is_refused(trained, tmp_path):
    folder = tmp_path / "photos"
    write_inputs(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(AssertionError, match="holds input images"):
        predict(trained, tmp_path, folder, f"output={folder}")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_an_output_that_is_a_file_is_refused_before_a_model_loads(tmp_path):
    """An image's name given as the output (`output=photo.jpg`): a folder is meant."""
    write_inputs(tmp_path / "in")
    before = (tmp_path / "in" / "0.png").read_bytes()
    with pytest.raises(AssertionError, match=r"output='.*0.png' is a file: give a folder"):
        run("predict.py", "ckpt_path=x.ckpt", f"input={tmp_path / 'in'}",
            f"output={tmp_path / 'in' / '0.png'}", log_dir=tmp_path / "logs")  # fmt: skip
    assert (tmp_path / "in" / "0.png").read_bytes() == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("ckpt_path=x.ckpt input={tmp}/nowhere", r"input='.*nowhere': no image file, folder"),
        ("ckpt_path=x.ckpt input={tmp}/in/*.gif", r"\*.gif': no image file, folder .* glob"),
        ("input={tmp}/in", r"ckpt_path=<a training checkpoint> is needed \(backend=torch\)"),
        ("ckpt_path=x.ckpt input={tmp}/in tile=64 tile_overlap=0.9", r"overlap=0.9: .*0..0.75"),
        ("ckpt_path=x.ckpt input={tmp}/in max_image_pixels=0", r"max_image_pixels=0: a number of"),
        # named as given, not as the model's keys (model.roi_heads.detections_per_img=0)
        ("ckpt_path=x.ckpt input={tmp}/in max_detections=0", r": max_detections=0: must lie in"),
        ("ckpt_path=x.ckpt input={tmp}/in score_thresh=-1", r": score_thresh=-1: must lie in"),
        ("ckpt_path=x.ckpt input={tmp}/in nms_thresh=0", r": nms_thresh=0: must lie in \(0, 1\]"),
        ("ckpt_path=x.ckpt input={tmp}/in tta=mirror", r": tta='mirror': one of none, flip"),
        ("ckpt_path=x.ckpt input={tmp}/in draw_thresh=30", r": draw_thresh=30: must lie in"),
        ("ckpt_path=x.ckpt input={tmp}/in batch_size=0", r": batch_size=0: must lie in \[1,"),
        # a path Hydra reads as a number: a traceback from pathlib before
        ("ckpt_path=x.ckpt input=2024", r": input=2024: Hydra read a number, .* e.g. ./2024"),
        ("ckpt_path=5 input={tmp}/in", r": ckpt_path=5: Hydra read a number, not a path"),
        # torch's RuntimeError with a traceback before
        (
            "ckpt_path=x.ckpt input={tmp}/in trainer.accelerator=tpu",
            r": device='tpu': one of auto,",
        ),
        (
            "backend=onnxruntime model_file={tmp}/m.onnx input={tmp}/in device=gpu",
            r"backend=onnxruntime runs on the CPU: device=cpu or device=auto",
        ),
    ],
)
def test_bad_settings_are_refused_naming_them_before_a_model_loads(tmp_path, overrides, message):
    """(ckpt_path=x.ckpt and m.onnx do not exist: each refusal comes before a model is read.)"""
    write_inputs(tmp_path / "in")
    args = overrides.format(tmp=tmp_path).split()
    with pytest.raises(AssertionError, match=message):
        run("predict.py", *args, f"output={tmp_path / 'out'}", log_dir=tmp_path / "logs")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("device", ["mps", "CPU", 0])
def test_a_device_the_predictor_does_not_run_on_is_refused_naming_it(device):
    """(Apple's MPS has no float64, which the NMS needs; 0 is no name of a device)"""
    told = f"device={device!r}: one of auto, cpu, gpu, cuda or cuda:N"
    with pytest.raises(ValueError, match=f"^{re.escape(told)}$"):
        resolve_device(device)
    assert resolve_device(torch.device("cpu")) == resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(("backend", "name"), [("onnxruntime", "m.onnx"), ("pt2", "m.pt2"),
                                             ("openvino", "m.xml")])  # fmt: skip
def test_an_exported_file_that_its_runtime_cannot_read_is_refused_naming_it(
    tmp_path, backend, name
):
    """A truncated or foreign file: each runtime's own error (onnxruntime's InvalidProtobuf,
    torch's RuntimeError, ...) ended predict.py with a traceback."""
    (tmp_path / name).write_bytes(b"junk")
    with pytest.raises(ValueError, match=rf"^model_file='.*{name}' cannot be read by {backend} "
                       r"\(.+\): is it a file export.py wrote, whole\?$"):  # fmt: skip
        Predictor.from_exported(tmp_path / name, backend)


def test_an_exported_file_for_another_backend_or_without_its_metadata_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    (tmp_path / "m.pt2").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"m.pt2' is run by backend=pt2; backend=onnxruntime "
                       r"runs export.py's .onnx files"):  # fmt: skip
        Predictor.from_exported(tmp_path / "m.pt2", "onnxruntime")
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy")
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "other.onnx")  # an ONNX file not of export.py
    with pytest.raises(ValueError, match=r"other.onnx' lacks the metadata export.py writes "
                       r"\(image_size, resize, class_names, category_ids\)"):  # fmt: skip
        Predictor.from_exported(tmp_path / "other.onnx", "onnxruntime")


def test_odd_file_names_cost_no_results(trained, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index, name in enumerate(["7.png", "..jpg", "².jpg"]):
        draw_sample(5, index, 6).image.save(inputs / name, format="PNG" if index == 0 else "JPEG")
    out, _ = predict(trained, tmp_path, inputs, "score_thresh=0.0")
    assert len(list(out.glob("*.jpg"))) == 3
    detections = json.loads((out / "detections.json").read_text())
    assert {(d["file_name"], d["image_id"]) for d in detections} == {
        ("7.png", 7),
        ("..jpg", 8),
        ("².jpg", 9),
    }


def test_inputs_with_the_same_name_keep_their_own_pictures_and_ids(trained, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        draw_sample(5, 0 if sub == "a" else 3, 6).image.save(tmp_path / "in" / sub / "7.png")
    out, _ = predict(trained, tmp_path, f"{tmp_path / 'in'}/**/*.png", "score_thresh=0.0")
    assert sorted(p.name for p in out.glob("*.jpg")) == ["7.jpg", "7_1.jpg"]
    detections = json.loads((out / "detections.json").read_text())
    assert {(d["image_id"], d["file_name"], d["picture"]) for d in detections} == {
        (7, "a/7.png", "7.jpg"),
        (8, "b/7.png", "7_1.jpg"),
    }


def test_coco_results_keep_what_the_pictures_leave_out(trained, tmp_path):
    write_inputs(tmp_path / "in")
    out, printed = predict(trained, tmp_path, tmp_path / "in", "draw_thresh=0.99")
    scores = [d["score"] for d in json.loads((out / "detections.json").read_text())]
    assert scores and min(scores) >= 0.05 and max(scores) < 0.99
    # the summary says that the pictures show nothing, and what would show the best
    assert "0 detections drawn (scoring >= draw_thresh=0.99)" in printed
    assert f"No detection scored 0.99 or more (the best {max(scores):.3f})" in printed
    out, printed = predict(trained, tmp_path, tmp_path / "in", "draw_thresh=0.05")  # all
    assert re.search(rf"\b{len(scores)} detections? drawn", printed)
    assert "No detection scored" not in printed


def test_the_summary_of_one_photo_and_one_detection_counts_them_in_the_singular(trained, tmp_path):
    draw_sample(5, 0, 6).image.save(tmp_path / "photo.png")
    args = ("score_thresh=0.0", "max_detections=1", "draw_thresh=0.0")
    out, printed = predict(trained, tmp_path, tmp_path / "photo.png", *args)
    assert len(json.loads((out / "detections.json").read_text())) == 1
    assert re.search(r"\b1 image in [\d.]+ s \([\d.]+ images/s\), 1 detection -> ", printed)
    assert "pictures: 1 detection drawn (scoring >= draw_thresh=0.0)" in printed


def test_a_decompression_bomb_is_skipped_and_named(trained, tmp_path, monkeypatch):
    write_inputs(tmp_path / "in")
    Image.new("RGB", (1000, 1000)).save(tmp_path / "in" / "huge.png")
    # PIL refuses images over twice MAX_IMAGE_PIXELS: a 225-megapixel photo, scaled down
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000)
    out, output = predict(trained, tmp_path, tmp_path / "in")
    assert "huge.png: DecompressionBombError" in output
    assert (out / "0.jpg").is_file() and (out / "1.jpg").is_file()


def test_phone_photos_are_turned_upright_before_detection(tmp_path):
    from frcnn.inference.predictor import open_image

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to view
    Image.new("RGB", (300, 200)).save(tmp_path / "phone.jpg", exif=exif)
    assert open_image(tmp_path / "phone.jpg").size == (200, 300)


def test_output_names_stay_distinct_whatever_the_inputs_are_called():
    from pathlib import Path

    from frcnn.app import output_names

    files = [Path("a/7.png"), Path("b/7.png"), Path("c/7_1.png"), Path("d/..jpg")]
    assert output_names(files) == ["7.jpg", "7_1.jpg", "7_1_1.jpg", "image3.jpg"]


def test_output_names_are_the_first_free_of_each_stems_numbers():
    """Against the rule applied name by name: a stem, else the first of stem_1, stem_2, ...
    not taken yet; on 3,000 inputs whose stems also look like numbered ones."""
    import random
    from pathlib import Path

    from frcnn.app import output_names

    rng = random.Random(0)
    stems = ["a", "a_1", "a_2", "a_1_1", "b", "b_3", "x y", "x_y"]
    files = [Path(f"d{rng.randrange(50)}/{rng.choice(stems)}.png") for _ in range(3000)]
    expected, taken = [], set()
    for path in files:
        stem = path.stem.replace(" ", "_")
        name = next(n for n in [stem, *(f"{stem}_{k}" for k in range(1, 4000))] if n not in taken)
        taken.add(name)
        expected.append(f"{name}.jpg")
    assert output_names(files) == expected


def test_predictor_from_a_checkpoint_takes_tta_or_keeps_the_checkpoints(trained):
    _, run_dir = trained
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert Predictor.from_checkpoint(checkpoint, "cpu").model.tta == "none"  # the checkpoint's
    flipped = Predictor.from_checkpoint(checkpoint, "cpu", tta="flip")
    assert flipped.model.tta == "flip"
    record = draw_sample(0, 0, 6, max_objects=4)
    detection = flipped(record.image)
    width, height = record.image.size
    assert (
        (detection["boxes"] >= 0) & (detection["boxes"] <= torch.tensor([width, height] * 2))
    ).all()


def test_sigterm_stops_predict_with_the_detections_so_far(trained, tmp_path):
    """A real process stopped by SIGTERM while it works through 300 images: exit 143, and a
    detections.json of the images it did (their pictures were written)."""
    _, run_dir = trained
    (tmp_path / "in").mkdir()
    for i in range(300):
        Image.new("RGB", (64, 48), (i % 256, 90, 30)).save(tmp_path / "in" / f"{i}.png")
    out = tmp_path / "out"
    args = [
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"input={tmp_path / 'in'}",
        f"output={out}", "device=cpu", "batch_size=1", "score_thresh=0.0",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "predict.py"), *args], cwd=ROOT, env=process_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.jpg"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    printed, _ = process.communicate(timeout=60)
    assert process.returncode == 143, printed[-3000:]
    assert "predict stopped by SIGTERM" in printed
    detections = json.loads((out / "detections.json").read_text())
    done = {int(p.stem) for p in out.glob("*.jpg")}
    assert 5 <= len(done) < 300 and {d["image_id"] for d in detections} <= done


def test_predict_py_keeps_the_checkpoints_count_of_detections_unless_told(trained, tmp_path):
    """A checkpoint trained to keep 3 detections per image (model.roi_heads.detections_per_img,
    as a dense scene's 300): predict.py keeps its count, with tiles too, and max_detections=
    changes it (a default of 100 had capped a checkpoint of 300 at 100)."""
    _, run_dir = trained
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["config"]["model"]["roi_heads"]["detections_per_img"] = 3
    torch.save(checkpoint, tmp_path / "three.ckpt")
    (tmp_path / "in").mkdir()
    draw_sample(5, 0, 6).image.save(tmp_path / "in" / "0.png")
    args = [f"ckpt_path={tmp_path / 'three.ckpt'}", f"input={tmp_path / 'in'}", "device=cpu"]

    def found(*added) -> int:
        out = tmp_path / f"out{len(added)}"
        run("predict.py", *args, f"output={out}", *added, log_dir=tmp_path / "logs")
        return len(json.loads((out / "detections.json").read_text()))

    assert found("max_detections=10", "score_thresh=0") == 10
    assert found("score_thresh=0") == 3
    assert found("score_thresh=0", "tile=64", "tile_overlap=0") == 3


def test_predict_py_on_tiles_gives_the_tiled_detections_in_the_whole_images_pixels(
    trained, tmp_path
):
    """tile=400 tile_overlap=0.25 on a 1600 x 800 image: detections.json holds what
    `detect_tiled` finds (tests/inference/test_tiles.py measures its recall), in the image's
    pixels; a tile too small to detect on is refused before anything runs."""
    from frcnn.inference.tiles import detect_tiled
    from tests.inference.test_tiles import large_canvas

    _, run_dir = trained
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    image, _, _ = large_canvas()
    (tmp_path / "in").mkdir()
    image.save(tmp_path / "in" / "big.png")
    args = [f"ckpt_path={checkpoint}", f"input={tmp_path / 'in'}", "device=cpu"]
    out = tmp_path / "out"
    run("predict.py", *args, f"output={out}", "tile=400", "tile_overlap=0.25",
        log_dir=tmp_path / "logs")  # fmt: skip
    found = json.loads((out / "detections.json").read_text())
    expected = detect_tiled(Predictor.from_checkpoint(checkpoint, "cpu"), image, 400, 0.25, 4, 100)
    assert len(found) == len(expected["scores"]) > 0
    for result, box, score in zip(found, expected["boxes"], expected["scores"], strict=True):
        x0, y0, x1, y1 = box.tolist()
        assert result["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.006)
        assert result["score"] == pytest.approx(float(score), abs=1e-5)
    assert max(r["bbox"][0] for r in found) > 400  # beyond the first tile
    with pytest.raises(AssertionError, match=r"tile=8: a tile's side in pixels, at least 32"):
        run("predict.py", *args, f"output={out}", "tile=8", log_dir=tmp_path / "logs")
