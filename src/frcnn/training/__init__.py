"""Training: the LightningModule (`module`), its callbacks (preemption, divergence, checkpoints,
the weights' moving average), the LR schedule, checkpoints loaded safely, and sweeps."""
