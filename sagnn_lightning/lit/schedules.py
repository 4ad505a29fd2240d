"""Learning-rate schedules that YAML can express (a ``LambdaLR`` needs a Python function; these do not).

Stepped once per epoch by :class:`~sagnn_lightning.lit.module.SAGNNModule` (``interval="epoch"``).
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class HoldThenLinearDecay(LambdaLR):
    """Optional linear warm-up over ``warmup_epochs`` (from ``warmup_start_factor`` × the initial rate to the
    initial rate), then a constant rate for ``hold_epochs``, then a linear decay to ``end_factor`` × the initial
    rate over ``decay_epochs``, constant afterwards.

    ``decay_epochs=None`` decays until the end of training: :class:`~sagnn_lightning.lit.module.SAGNNModule`
    sets it to ``trainer.max_epochs - warmup_epochs - hold_epochs`` (:meth:`fit_to`), so ``--trainer.max_epochs`` alone
    rescales the schedule. The recipes' default (``configs/sagnn.yaml``): hold 30 epochs, then to 1 %.

    kgcnn's MEGNet recipe (the one behind MEGNet's matbench leaderboard row): Adam 5e-4 held for 100 epochs,
    then linear to 5e-6 at epoch 1000 → ``hold_epochs=100, decay_epochs=900, end_factor=0.01``.

    Args:
        optimizer: the optimizer (its ``lr`` is the initial rate).
        hold_epochs: epochs at the initial rate (>= 0).
        decay_epochs: epochs of the linear decay (>= 1), or ``None``: until ``trainer.max_epochs``.
        end_factor: final rate / initial rate, in ``(0, 1]``.
        warmup_epochs: epochs of linear warm-up before the hold (>= 0; default 0 = none).
        warmup_start_factor: rate / initial rate in the first warm-up epoch, in ``(0, 1]``.
        last_epoch: as in ``torch.optim.lr_scheduler`` (-1 = start).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        hold_epochs: int = 100,
        decay_epochs: int | None = 900,
        end_factor: float = 0.01,
        warmup_epochs: int = 0,
        warmup_start_factor: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        if hold_epochs < 0 or warmup_epochs < 0 or (decay_epochs is not None and decay_epochs < 1):
            raise ValueError(
                "HoldThenLinearDecay: need warmup_epochs >= 0, hold_epochs >= 0 and decay_epochs >= 1, got "
                f"{warmup_epochs}, {hold_epochs}, {decay_epochs}"
            )
        for name, value in (("end_factor", end_factor), ("warmup_start_factor", warmup_start_factor)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"HoldThenLinearDecay: {name} must be in (0, 1], got {value}")
        self.hold_epochs, self.decay_epochs, self.end_factor = hold_epochs, decay_epochs, end_factor
        self.warmup_epochs, self.warmup_start_factor = warmup_epochs, warmup_start_factor
        super().__init__(optimizer, self.factor, last_epoch=last_epoch)

    def fit_to(self, max_epochs: int) -> None:
        """Decay until ``max_epochs`` when ``decay_epochs`` was left ``None`` (at least 1 epoch of decay)."""
        if self.decay_epochs is None:
            self.decay_epochs = max(int(max_epochs) - self.warmup_epochs - self.hold_epochs, 1)
            for group, lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = lr * self.factor(self.last_epoch)

    def factor(self, epoch: int) -> float:
        """Multiplier of the initial rate after ``epoch`` scheduler steps."""
        if epoch < self.warmup_epochs:
            return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * epoch / self.warmup_epochs
        if self.decay_epochs is None:  # not fitted to a budget yet: hold
            return 1.0
        done = min(max(epoch - self.warmup_epochs - self.hold_epochs, 0), self.decay_epochs) / self.decay_epochs
        return 1.0 - (1.0 - self.end_factor) * done

    def state_dict(self) -> dict:
        # LambdaLR stores the lambda only when it is a callable object; ours is a bound method rebuilt on init
        return {k: v for k, v in super().state_dict().items() if k != "lr_lambdas"}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict({**state_dict, "lr_lambdas": [None] * len(self.base_lrs)})


__all__ = ["HoldThenLinearDecay"]
