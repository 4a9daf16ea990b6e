"""Learning-rate schedules: a rate per (0-based) epoch, a function of the epoch alone, so that a
resumed run keeps its schedule."""

from __future__ import annotations

BURDA_EPOCHS = 3280  # sum of 3^i, i = 0..7


def burda_lr(epoch: int, base_lr: float = 1e-3, total_epochs: int = BURDA_EPOCHS, stages: int = 8) -> float:
    """Burda et al.'s schedule: stage i lasts 3^i epochs at base_lr * 10^(-i/7), i = 0..7
    (3,280 epochs in all). For another `total_epochs` every stage is scaled by
    total_epochs / 3280 (its end rounded to the nearest epoch; a stage may vanish), so a
    shorter run still ends at the last rate. Epochs past the end keep the last rate."""
    end = 0
    for stage in range(stages):
        end += 3**stage
        if epoch < round(end * total_epochs / BURDA_EPOCHS):
            return base_lr * 10 ** (-stage / 7)
    return base_lr * 10 ** (-(stages - 1) / 7)


def burda_equal_lr(epoch: int, base_lr: float, total_epochs: int, stages: int = 8) -> float:
    """Burda et al.'s eight rates, base_lr * 10^(-i/7), in stages of equal length: a shorter
    run than theirs spends more of its updates at the higher rates than the scaled 3^i
    stages would (which give the first rate under 1/3280 of the run)."""
    stage = min(stages - 1, epoch * stages // total_epochs)
    return base_lr * 10 ** (-stage / 7)


LR_SCHEDULES = ("constant", "burda", "burda-equal")


def scheduled_rate(schedule: str, epoch: int, base_lr: float, total_epochs: int) -> float:
    """The rate of ``epoch`` under ``schedule`` (one of LR_SCHEDULES), fitted to ``total_epochs``."""
    if schedule == "burda":
        return burda_lr(epoch, base_lr, total_epochs)
    if schedule == "burda-equal":
        return burda_equal_lr(epoch, base_lr, total_epochs)
    if schedule == "constant":
        return base_lr
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
