import pytest
import torch

from frcnn.lr_schedule import warmup_cosine, warmup_multistep


def lrs(make, steps, **kwargs):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = make(optimizer, total_steps=steps, **kwargs)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_then_multistep():
    lr = lrs(
        warmup_multistep,
        100,
        warmup_steps=10,
        warmup_start_factor=0.1,
        milestones=(0.5, 0.8),
        gamma=0.1,
    )
    assert lr[0] == pytest.approx(0.1)
    assert lr[5] == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr[10] == lr[49] == pytest.approx(1.0)
    assert lr[50] == pytest.approx(0.1) and lr[80] == pytest.approx(0.01)


def test_warmup_then_cosine():
    lr = lrs(warmup_cosine, 110, warmup_steps=10, warmup_start_factor=0.0, final_factor=0.0)
    assert lr[0] == 0.0 and lr[10] == pytest.approx(1.0)
    assert lr[60] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:], strict=False))
