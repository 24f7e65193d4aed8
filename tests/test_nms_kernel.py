"""The Triton NMS kernel (frcnn.nms_kernel, `model.nms_calls=triton`) against torchvision's
`nms`, row by row: on the CPU in Triton's interpreter (in a process of its own: TRITON_INTERPRET
is read when the kernel is defined), on a GPU compiled."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from packaging.version import Version
from torchvision.ops import nms

from frcnn.boxes import nms_in_rows, triton_missing

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def rows_of_cases(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """boxes (6, 129, 4) and scores (6, 129), negative where a box takes no part: overlapping
    random boxes, tied scores, identical and empty boxes, a row without candidates, NaN scores."""
    g = torch.Generator().manual_seed(0)
    rows, n = 6, 129  # not a power of two: the kernel's block has room to spare
    xy = torch.rand(rows, n, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + torch.rand(rows, n, 2, generator=g) * 60 + 1], -1)
    scores = torch.rand(rows, n, generator=g)
    scores[torch.rand(rows, n, generator=g) < 0.2] = -1.0
    scores[1] = (scores[1] * 4).round() / 4  # ties: the lower index goes first
    boxes[2, 10:20] = boxes[2, 10]  # identical boxes: IoU 1
    boxes[2, 20:25, 2:] = boxes[2, 20:25, :2]  # empty boxes: IoU 0 / 0 suppresses nothing
    scores[3] = -1.0  # a row without candidates keeps nothing
    scores[4, :5] = torch.nan  # a diverged model's scores take no part
    return boxes.to(device), scores.to(device)


def check_against_torchvision(device: str) -> None:
    from frcnn.nms_kernel import greedy_nms_rows

    boxes, scores = rows_of_cases(device)
    for thresh in (0.5, 0.7):
        kept = greedy_nms_rows(boxes, scores, thresh).cpu()
        for r, (row_boxes, row_scores) in enumerate(zip(boxes.cpu(), scores.cpu(), strict=True)):
            columns = (row_scores >= 0).nonzero().squeeze(1)
            expected = torch.zeros(len(row_scores), dtype=torch.bool)
            expected[columns[nms(row_boxes[columns], row_scores[columns], thresh)]] = True
            assert torch.equal(kept[r], expected), (thresh, r)
        assert not kept[3].any() and kept[2, 10:20].sum() <= 1  # one of identical boxes
        assert torch.equal(kept[2, 20:25], scores[2, 20:25].cpu() >= 0)  # empty: all kept
    assert greedy_nms_rows(boxes[:0], scores[:0], 0.5).shape == (0, scores.shape[1])


def interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run the kernel here, or None."""
    if missing := triton_missing():
        return missing
    import triton

    if Version(triton.__version__) < Version("3.7"):  # its scalars are 1-element arrays
        return f"Triton {triton.__version__}'s interpreter cannot loop to a loaded bound (3.7 can)"
    return None


@pytest.mark.skipif(bool(interpreter_problem()), reason=str(interpreter_problem()))
def test_the_kernel_keeps_what_torchvision_keeps_row_by_row_in_the_interpreter():
    # here, not at the top: the process imports this module, and the helpers import Lightning
    from tests.app.helpers import ROOT, process_env

    code = "from tests.test_nms_kernel import check_against_torchvision as c; c('cpu')"
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=process_env(TRITON_INTERPRET="1"),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]


@CUDA
def test_the_compiled_kernel_keeps_what_torchvision_keeps_row_by_row():
    check_against_torchvision("cuda")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_nms_in_rows_with_triton_keeps_what_the_calls_per_image_keep(device):
    """On a GPU through the kernel; elsewhere `triton` takes the calls per image."""
    boxes, scores = rows_of_cases(device)
    candidate = scores >= 0
    scores = scores.nan_to_num(0.0).clamp(min=0)
    kept = nms_in_rows(boxes, scores, candidate, 0.7, images=3, calls="triton")
    assert torch.equal(kept, nms_in_rows(boxes, scores, candidate, 0.7, images=3))


@pytest.mark.parametrize(
    ("module", "reason"),
    [(None, "no triton package"), (SimpleNamespace(__version__="3.1.0"), "triton 3.1.0 is older")],
)
def test_triton_missing_names_what_is_wrong(monkeypatch, module, reason):
    monkeypatch.setitem(sys.modules, "triton", module)  # None: its import fails
    assert triton_missing().startswith(reason)
