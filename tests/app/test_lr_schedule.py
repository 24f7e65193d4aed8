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


def test_milestones_may_be_step_numbers_as_in_coco400(tmp_path):
    from hydra.utils import instantiate

    from tests.app.helpers import composed

    cfg = composed(tmp_path, "experiment=coco400", "model.backbone.weights=null")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = instantiate(cfg.module.scheduler)(optimizer, total_steps=cfg.trainer.max_steps)
    factor = scheduler.lr_lambdas[0]
    assert factor(59999) == 1.0 and factor(60000) == pytest.approx(0.1)
    assert factor(79999) == pytest.approx(0.1) and factor(80000) == pytest.approx(0.01)
