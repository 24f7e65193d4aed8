import pytest
import torch

from frcnn.training.lr_schedule import check_resumed_schedule, warmup_decay


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
        warmup_decay,
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


def test_a_warm_up_below_one_is_a_fraction_of_the_run():
    """experiment=finetune counts epochs: its warm-up follows the data set's length."""
    for steps in (40, 400):
        lr = lrs(warmup_decay, steps, warmup_steps=0.1, warmup_start_factor=0.0, milestones=())
        assert lr[steps // 20] == pytest.approx(0.5) and lr[steps // 10] == 1.0


def test_warmup_then_cosine():
    lr = lrs(
        warmup_decay,
        110,
        warmup_steps=10,
        warmup_start_factor=0.0,
        decay="cosine",
        final_factor=0.0,
    )
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


def test_an_unknown_decay_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="module.scheduler.decay='linear'"):
        lrs(warmup_decay, 10, decay="linear")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        # a negative factor turns the LR negative (gradient ascent) at its milestone
        ({"gamma": -0.1}, r"module.scheduler.gamma=-0.1: must lie in \(0, inf\)"),
        ({"gamma": 0}, r"module.scheduler.gamma=0: must lie in \(0, inf\)"),  # LR 0 from there
        ({"decay": "cosine", "final_factor": -1}, r"module.scheduler.final_factor=-1: must lie"),
        ({"warmup_steps": -5}, r"module.scheduler.warmup_steps=-5: must lie"),
        ({"warmup_start_factor": 2}, r"module.scheduler.warmup_start_factor=2: must lie in \[0"),
        ({"milestones": [0.5, "0.9"]}, r"module.scheduler.milestones\[1\]='0.9': must be a num"),
        ({"milestones": [0, 0.9]}, r"module.scheduler.milestones\[0\]=0: must lie in \(0, inf"),
        # one milestone without its brackets: a TypeError before
        ({"milestones": 0.9}, r"milestones=0.9: a list, e.g. module.scheduler.milestones=\[0.9\]"),
    ],
)
def test_a_setting_out_of_its_range_is_refused_naming_the_key(setting, message):
    with pytest.raises(ValueError, match=message):
        lrs(warmup_decay, 10, **setting)


def test_a_run_shorter_than_its_schedule_says_so(caplog):
    lr = lrs(warmup_decay, 30, warmup_steps=1000, milestones=(60000, 80000))
    assert lr[-1] == pytest.approx(0.001 + 0.999 * 29 / 1000)  # the schedule is kept
    assert "warmup_steps=1000 is longer than the run (30 steps)" in caplog.text
    assert "ends at 3% of module.optimizer.lr" in caplog.text
    assert "milestones at steps 60000, 80000 lie beyond the run (30 steps)" in caplog.text
    caplog.clear()
    lrs(warmup_decay, 1, warmup_steps=10)
    assert "warmup_steps=10 is longer than the run (1 step): the LR ends at 0.1%" in caplog.text
    caplog.clear()
    lrs(warmup_decay, 300, warmup_steps=10, milestones=(0.5, 0.8))
    assert not caplog.text


def test_a_resume_whose_schedule_moves_says_at_which_lr_it_goes_on(caplog):
    """8 steps of an 8-step run (both milestones passed: LR 0.01), resumed into 16 steps: the
    milestones move to steps 11 and 14, and the LR would jump back to 1. Said; a resume into a
    run of the checkpoint's own length is not."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    first = warmup_decay(optimizer, total_steps=8, warmup_steps=0)
    for _ in range(8):
        optimizer.step()
        first.step()
    saved = first.state_dict()
    for total, warned in ((8, False), (16, True)):
        caplog.clear()
        resumed = warmup_decay(optimizer, total_steps=total, warmup_steps=0)
        resumed.load_state_dict(saved)  # as Lightning restores it
        check_resumed_schedule(resumed, total)
        said = "at step 8 the LR goes on at 1, not the 0.01 it stopped at" in caplog.text
        assert said == warned, caplog.text
