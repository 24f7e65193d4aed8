"""torch.export of the detector graph (what `export.py format=pt2` compiles): the same outputs as
the eager graph on any batch size, also where nothing is detected; the eager model unchanged."""

import pytest
import torch

from frcnn.inference.detector_graph import DetectorGraph
from frcnn.inference.pt2_package import TORCH_NEEDED, exported_program, torch_supported
from frcnn.model import FasterRCNN

SIZE = 64
pytestmark = pytest.mark.skipif(
    not torch_supported(), reason=f"format=pt2 needs torch {TORCH_NEEDED} or newer"
)


def small_detector(score_thresh: float) -> FasterRCNN:
    torch.manual_seed(0)
    return FasterRCNN(
        num_classes=3,
        backbone={"depth": 18, "norm": "bn", "weights": None},
        fpn_channels=32,
        rpn={"pre_nms_top_n_test": 100, "post_nms_top_n_test": 50},
        roi_heads={"representation_size": 64, "score_thresh": score_thresh},
    ).eval()


def batch(count: int):
    images = torch.randint(0, 256, (count, 3, SIZE, SIZE), dtype=torch.uint8)
    sizes = torch.tensor([[SIZE, SIZE - 8 * i] for i in range(count)])
    return images, sizes


@pytest.mark.parametrize("score_thresh", [0.0, 0.99])
def test_the_exported_graph_gives_the_eager_graphs_outputs_on_any_batch(score_thresh):
    """0.99: no candidate is left for the last NMS (torchvision's shape function of `nms`
    declares at least 2 kept boxes, which the graph would assert at run time)."""
    model = small_detector(score_thresh)
    torch.manual_seed(1)
    inputs = {count: batch(count) for count in (1, 3)}
    with torch.no_grad():
        before = {count: DetectorGraph(model)(*x) for count, x in inputs.items()}
    program = exported_program(model, SIZE).module()
    for count, x in inputs.items():
        with torch.no_grad():
            traced, eager = program(*x), DetectorGraph(model)(*x)
        counts = eager[3]
        assert (counts > 0).all() if score_thresh == 0 else (counts == 0).all()
        for a, b, c in zip(traced, eager, before[count], strict=True):
            torch.testing.assert_close(a, b)
            torch.testing.assert_close(b, c)  # the eager model as it was before the export
