"""Learning-rate schedule: linear warm-up, then multistep or cosine decay, per optimiser step."""

import logging
import math

from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from frcnn.checks import check_number, is_list, typed_setting
from frcnn.structures import counted

log = logging.getLogger(__name__)


def warmup_factor(step: int, warmup_steps: int, start_factor: float) -> float:
    """Linear ramp from `start_factor` to 1 over `warmup_steps` steps, then 1."""
    if step >= warmup_steps:
        return 1.0
    return start_factor + (1 - start_factor) * step / warmup_steps


@rank_zero_only  # once, not once per DDP process
def check_short_run(total_steps: int, warmup_steps: int, start_factor: float, steps=()) -> None:
    """Warn where a run is too short for its schedule (a few steps of a long recipe, e.g.
    `experiment=coco400 trainer.max_steps=30`): the warm-up never ends, milestones never come.
    The schedule is kept as configured: a short run of a long recipe is usually a smoke test."""
    if warmup_steps > total_steps:
        reached = warmup_factor(total_steps - 1, warmup_steps, start_factor)  # the last step
        log.warning(
            "module.scheduler.warmup_steps=%d is longer than the run (%s): the LR ends at "
            "%.2g%% of module.optimizer.lr; lower warmup_steps for a short run that learns",
            warmup_steps,
            counted(total_steps, "step"),
            100 * reached,
        )
    beyond = [s for s in steps if s > total_steps]
    if beyond:
        log.warning(
            "module.scheduler.milestones at steps %s lie beyond the run (%s): the LR is "
            "never decayed there; milestones <= 1 are fractions of the run (e.g. [0.67, 0.89])",
            ", ".join(map(str, beyond)),
            counted(total_steps, "step"),
        )


def warmup_decay(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: float = 500,
    warmup_start_factor: float = 0.001,
    decay: str = "multistep",
    milestones=(0.67, 0.89),
    gamma: float = 0.1,
    final_factor: float = 0.01,
) -> LambdaLR:
    """Linear warm-up over `warmup_steps` (steps, or a fraction below 1 of `total_steps`: a
    recipe that counts epochs of data sets of any length), then `decay`:

    - "multistep": the LR times `gamma` at each of `milestones`, a fraction of `total_steps`
      (at most 1) or a step number (above 1, e.g. the 1x schedule's 60000 and 80000);
    - "cosine": half a cosine from the full LR down to `final_factor` of it at the end.

    One function for both, so that an experiment's settings compose with either decay. Each
    setting is checked here, naming it: a negative factor would turn the LR negative (gradient
    ascent) at its step, far into the run, and a `gamma` of 0 stop the learning there.
    """
    check_number("module.scheduler.warmup_steps", warmup_steps, 0)
    check_number("module.scheduler.warmup_start_factor", warmup_start_factor, 0, 1)
    check_number("module.scheduler.gamma", gamma, 0, open_low=True)
    check_number("module.scheduler.final_factor", final_factor, 0)
    if not is_list(milestones):
        example = typed_setting("module.scheduler.milestones", [milestones])
        raise ValueError(f"module.scheduler.milestones={milestones!r}: a list, e.g. {example}")
    for index, milestone in enumerate(milestones):
        check_number(f"module.scheduler.milestones[{index}]", milestone, 0, open_low=True)
    if 0 < warmup_steps < 1:
        warmup_steps = max(1, round(warmup_steps * total_steps))
    if decay == "multistep":
        steps = sorted(round(m * total_steps) if m <= 1 else int(m) for m in milestones)
        check_short_run(total_steps, warmup_steps, warmup_start_factor, steps)

        def decayed(step: int) -> float:
            return gamma ** sum(step >= s for s in steps)

    elif decay == "cosine":
        check_short_run(total_steps, warmup_steps, warmup_start_factor)

        def decayed(step: int) -> float:
            span = max(1, total_steps - warmup_steps)
            progress = min(1.0, max(0.0, (step - warmup_steps) / span))
            return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    else:
        raise ValueError(f"module.scheduler.decay={decay!r}: choose multistep or cosine")

    return LambdaLR(
        optimizer,
        lambda step: warmup_factor(step, warmup_steps, warmup_start_factor) * decayed(step),
    )


@rank_zero_only  # once, not once per DDP process
def check_resumed_schedule(scheduler: LambdaLR | None, total_steps: int) -> None:
    """A resumed run's schedule is laid over its own length (`total_steps`): where that is not
    the checkpoint's (more epochs or steps, other data, other devices), the LR goes on at
    another value than the one it stopped at (milestones given as fractions move, the cosine
    stretches): warned, with both values and what keeps the checkpoint's decay."""
    if scheduler is None or scheduler.last_epoch == 0:  # not resumed
        return
    step, stopped = scheduler.last_epoch, scheduler.get_last_lr()[0]
    goes_on = scheduler.base_lrs[0] * scheduler.lr_lambdas[0](step)
    if math.isclose(stopped, goes_on, rel_tol=1e-3):
        return
    log.warning(
        "Resumed into a run of %d steps, not the length the checkpoint's LR schedule was laid "
        "over: at step %d the LR goes on at %.3g, not the %.3g it stopped at (the warm-up, "
        "milestones given as fractions and the cosine follow the run's length). To go on with "
        "the decay it had, give module.scheduler.milestones as step numbers (above 1)",
        total_steps, step, goes_on, stopped,
    )  # fmt: skip
