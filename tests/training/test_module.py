import functools
from unittest.mock import patch

import pytest
import torch

from frcnn.model import FasterRCNN
from frcnn.training.module import COMPILE_SCOPES, DetectorModule
from tests.app.helpers import TINY, metrics, run, run_dirs
from tests.helpers import in_two_processes


def module():
    model = FasterRCNN(num_classes=2, backbone=dict(depth=18, frozen="layer2"), fpn_channels=16)
    return DetectorModule(model, functools.partial(torch.optim.SGD, lr=0.1, weight_decay=1e-4))


def test_no_weight_decay_on_biases_and_norms_and_no_frozen_parameters():
    optimizer = module().configure_optimizers()
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert all(p.requires_grad for g in optimizer.param_groups for p in g["params"])


def test_a_non_finite_loss_stops_training_at_the_next_check_naming_its_step_and_term():
    """Noted on the device at every step; read every `finite_check_every` steps and before a
    checkpoint (the read at step 7 here), naming the first non-finite step."""
    m = module()
    m.on_train_start()

    def step(number, rpn_box):
        losses = dict.fromkeys(("rpn_cls", "roi_cls", "roi_box"), torch.tensor(0.5))
        losses["rpn_box"] = torch.tensor(rpn_box)
        with patch.object(DetectorModule, "global_step", number):
            m.on_train_batch_end({"loss": sum(losses.values()), "losses": losses}, None, 0)

    step(1, 0.1)
    step(3, float("nan"))  # noted, not read
    step(5, float("inf"))
    bad = r"step 3 .*: rpn_box\. Training stopped"
    with (
        pytest.raises(FloatingPointError, match=bad),
        patch.object(DetectorModule, "global_step", 7),
    ):
        m.on_save_checkpoint({})
    with pytest.raises(FloatingPointError, match=r"step 3 "):
        step(50, 0.1)  # the periodic read


def image(box, score, loss):
    """One validated image: its ground truth box (label 1) and one detection of `box`."""
    truth = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    return {
        "images": 1,
        "losses": dict.fromkeys(("rpn_cls", "rpn_box", "roi_cls", "roi_box"), torch.tensor(loss)),
        "preds": [{"boxes": torch.tensor([box]), "scores": torch.tensor([score]),
                   "labels": torch.tensor([1])}],
        "truths": [{"boxes": truth, "labels": torch.tensor([1]), "iscrowd": torch.tensor([0])}],
        "input_boxes": [truth], "input_labels": [torch.tensor([1])], "image_size": 64,
    }  # fmt: skip


# a hit scored 0.9 and a miss scored 0.95: AP 1 and 0 apart, between them together
HIT, MISS = image([0.0, 0.0, 10.0, 10.0], 0.9, 1.0), image([50.0, 50.0, 60.0, 60.0], 0.95, 3.0)


def figures(batches, model=None) -> dict:
    m = DetectorModule(model or torch.nn.Identity(), None)
    logged = {}
    m.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    m._val_batches = batches
    m.on_validation_epoch_end()
    return logged


def test_validation_figures_over_processes_are_those_of_all_their_images(tmp_path):
    """Two real processes (gloo) of one image each give the figures of both images."""
    results = in_two_processes(lambda rank: figures([[HIT], [MISS]][rank]), tmp_path)
    together = figures([HIT, MISS])
    assert figures([HIT])["val/map_50"] == 1.0 and figures([MISS])["val/map_50"] == 0.0
    assert 0.0 < together["val/map_50"] < 1.0 and together["val/images"] == 2
    assert together["val/rpn_cls"] == 2.0 and together["val/loss"] == 8.0  # mean per image
    assert results == [together, together]


def crowded_image(objects: int, detected: int) -> dict:
    """One validated image of `objects` boxes (label 1), the first `detected` found exactly."""
    boxes = torch.tensor([[12.0 * i, 0.0, 12.0 * i + 10, 10.0] for i in range(objects)])
    scores, labels = torch.linspace(0.99, 0.5, objects), torch.ones(objects, dtype=torch.long)
    found = {"boxes": boxes, "scores": scores, "labels": labels}
    return {
        **HIT,
        "preds": [{key: value[:detected] for key, value in found.items()}],
        "truths": [{"boxes": boxes, "labels": labels, "iscrowd": torch.zeros_like(labels)}],
        "input_boxes": [boxes], "input_labels": [labels],
    }  # fmt: skip


@pytest.mark.parametrize("detections_per_img", [100, 300])
def test_the_map_counts_every_detection_the_detector_returns_and_warns_of_more_objects(
    detections_per_img, caplog
):
    """COCOeval counts 100 detections per image; a detector that returns more (a dense scene's
    300) is scored on all of them (COCO's limit stays the least). An image of more objects
    than the detector returns is warned of: its recall cannot reach them."""
    roi_heads = {"detections_per_img": detections_per_img}
    model = FasterRCNN(num_classes=2, backbone=dict(depth=18), fpn_channels=16, roi_heads=roi_heads)
    logged = figures([crowded_image(150, detected=min(150, detections_per_img))], model)
    if detections_per_img == 300:  # every object found, and counted
        assert logged["val/map"] == 1.0 and logged["val/mar_300"] == 1.0
        assert "mar_100" not in str(logged) and "objects" not in caplog.text
    else:  # the detector returns 100 of the 150
        assert logged["val/map"] == pytest.approx(100 / 150, abs=0.01)
        assert logged["val/mar_100"] == pytest.approx(100 / 150, abs=1e-3)
        assert "A validation image holds 150 objects, more than the 100 detections" in caplog.text


def test_each_compile_scope_compiles_its_parts_in_place_and_trains_the_same():
    """The "eager" backend wraps the parts as inductor would (tests/model/test_roi_heads.py
    compiles with inductor itself): the scope's parts and no other; the same losses."""
    torch.manual_seed(0)
    plain = module()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}] * 2
    for scope, parts in COMPILE_SCOPES.items():
        compiled = module()
        compiled.load_state_dict(plain.state_dict())
        compiled.compile_backend, compiled.compile_scope = "eager", scope
        compiled.setup("fit")
        wrapped = {n for n, m in compiled.model.named_modules() if m._compiled_call_impl}
        assert wrapped == set(parts)
        assert set(compiled.state_dict()) == set(plain.state_dict())  # keys as before
        losses = []
        for m in (plain, compiled):
            torch.manual_seed(1)  # the same samples of anchors and proposals
            losses.append(m(images, targets))
        torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("scope", list(COMPILE_SCOPES))
def test_parts_compiled_into_cuda_graphs_train_and_validate_on_a_gpu(scope, tmp_path):
    """`module.compile=cudagraphs`: CUDA graph trees keep a compiled part's outputs only until
    the next step; validation (no backward pending) began one at every part's call, which
    freed the backbone's outputs before the FPN read them (seen on an H200 at the first
    validation after training)."""
    result = run(
        "train.py",
        *(o for o in TINY if o != "device=cpu"),
        "data.val.num_images=24",
        "trainer.max_epochs=2",
        "module.compile=cudagraphs",
        f"module.compile_scope={scope}",
        log_dir=tmp_path,
    )
    assert "train finished" in result.stdout + result.stderr
    (run_dir,) = run_dirs(tmp_path)
    assert metrics(run_dir)["val/images"] == 24


def test_an_unknown_compile_scope_fails_at_start_up():
    model = FasterRCNN(num_classes=2, backbone=dict(depth=18), fpn_channels=16)
    with pytest.raises(
        ValueError, match="^module.compile_scope='all': one of backbone, fixed_shapes$"
    ):
        DetectorModule(model, torch.optim.SGD, compile_scope="all")


def test_the_metrics_a_run_logs_are_those_its_settings_may_monitor(tmp_path):
    """`metric_names` (train.py checks callbacks' `monitor` and `optimized_metric` against it
    at start-up) holds every figure a fit logs, and logs all but the classes' APs."""
    import lightning as L

    from frcnn.data import DetectionDataModule, SyntheticShapes

    def shapes(seed):
        return functools.partial(SyntheticShapes, num_images=4, num_classes=2, seed=seed)

    data = DetectionDataModule(shapes(0), shapes(1), batch_size=2, num_workers=0, image_size=64)
    model = FasterRCNN(num_classes=2, backbone=dict(depth=18), fpn_channels=16)
    optimizer = functools.partial(torch.optim.SGD, lr=0.01)
    m = DetectorModule(model, optimizer, class_names=["a", "b"], per_class_map=True)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(m, data)
    logged, names = set(trainer.callback_metrics), m.metric_names()
    assert logged <= names and "val/map" in logged and "train/loss_epoch" in logged
    assert {n for n in names - logged if not n.startswith("val/ap/")} == {"epoch", "step"}
    assert {"val/ap/a", "val/ap/b"} <= names
