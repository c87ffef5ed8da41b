"""The loss-level methods: the K task losses become one scalar, then one backward pass, at the cost
of ``fixed`` plus a few scalar operations: ``fixed``, ``uncertainty``, ``dwa``, ``rlw``, ``gls``
and ``famo``.

Cut from the gradient-level methods, which take a backward pass per task and share their own
machinery (``gradient``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fusionsearch.tasks.weighting.arguments import Number
from fusionsearch.tasks.weighting.base import Weighting, register_weighting

__all__ = ["Fixed", "Uncertainty", "DWA", "RLW", "GLS", "FAMO"]


@register_weighting("fixed")
class Fixed(Weighting):
    """The tasks' own ``loss_weight`` (recipe ``task_args``), summed: the papers' training."""

    arguments = {}

    def combine(self, losses: Mapping[str, Tensor], step: int) -> Tensor:
        self._weights = {t: 1.0 if t in losses else 0.0 for t in self.tasks}
        return self._stack(losses).sum()


@register_weighting("uncertainty")
class Uncertainty(Weighting):
    """Homoscedastic uncertainty (Kendall, Gal and Cipolla, CVPR 2018): learned log-variances.

    Homoscedastic uncertainty (Kendall, Gal and Cipolla, CVPR 2018), as LibMTL's ``UW``:
    loss = sum_i L_i / (2 exp(s_i)) + s_i / 2 with learned log-variances s_i (start 0), so a task's
    weight is 1 / (2 exp(s_i)). The s_i train at the base learning rate and are saved with the
    training state."""

    # a start of +-20 already weighs a task 1e-9 or 2e8 times; exp(-s) of more leaves float32
    arguments = {"init": Number(-20.0, 20.0)}

    def __init__(self, tasks: Sequence[str], *, seed: int = 0, init: float = 0.0) -> None:
        super().__init__(tasks, seed=seed)
        self.log_vars = nn.Parameter(torch.full((len(self.tasks),), float(init)))

    def combine(self, losses: Mapping[str, Tensor], step: int) -> Tensor:
        idx = self._present(losses)
        s = self.log_vars[idx]  # an absent task's s_i gets no gradient: its 0.5 s_i would only shrink it
        w = 0.5 * torch.exp(-s)
        self._set_weights(idx, w)
        return (w * self._stack(losses) + 0.5 * s).sum()


@register_weighting("dwa")
class DWA(Weighting):
    """Dynamic weight average (Liu, Johns and Davison, CVPR 2019): weights from loss ratios.

    Dynamic weight average (Liu, Johns and Davison, CVPR 2019): w_i = K exp(r_i / T) /
    sum_j exp(r_j / T) with r_i the ratio of task i's mean loss over the last ``period`` steps to
    its mean over the ``period`` before, T = ``temperature`` (2); weight 1 until two periods have
    passed. The mtan code uses epoch means; a period of steps is that for step-budgeted training."""

    search_args = {"temperature": (1.0, 4.0)}
    # beyond T = 100 the weights are 1 to within 1%; a period is a number of steps
    arguments = {"temperature": Number(0.0, 100.0, open_low=True), "period": Number(1, 1_000_000, whole=True)}

    def __init__(self, tasks: Sequence[str], *, seed: int = 0, temperature: float = 2.0, period: int = 20) -> None:
        super().__init__(tasks, seed=seed)
        self.temperature, self.period = float(temperature), int(period)
        self.history: deque[list[float]] = deque(maxlen=2 * self.period)

    def current(self) -> Tensor:
        if len(self.history) < 2 * self.period:
            return torch.ones(len(self.tasks))
        h = torch.tensor(list(self.history), dtype=torch.float64)  # NaN where a task was unlabelled
        ratio = h[self.period :].nanmean(0) / h[: self.period].nanmean(0).clamp_min(1e-12)
        ratio = torch.nan_to_num(ratio, nan=1.0)  # a task labelled in neither period: ratio 1
        return (len(self.tasks) * torch.softmax(ratio / self.temperature, 0)).float()

    def combine(self, losses: Mapping[str, Tensor], step: int) -> Tensor:
        idx = self._present(losses)
        w = self.current()[idx].to(next(iter(losses.values())).device)
        self._set_weights(idx, w)
        return (w * self._stack(losses)).sum()

    def observe(self, losses: Mapping[str, float], step: int) -> None:
        self.history.append(self._history_row(losses))

    def get_extra_state(self) -> Any:
        return list(self.history)

    def set_extra_state(self, state: Any) -> None:
        self.history = deque(state, maxlen=2 * self.period)


@register_weighting("rlw")
class RLW(Weighting):
    """Random loss weighting (Lin et al., TMLR 2022): softmax of Gaussian weights each step.

    Random loss weighting (Lin et al., TMLR 2022), as LibMTL: each step w = softmax(z), z ~ N(0, I),
    drawn from (seed, step) so that a resumed run draws the same weights."""

    arguments = {}

    def combine(self, losses: Mapping[str, Tensor], step: int) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = self._present(losses)
        w = torch.softmax(torch.randn(len(self.tasks), generator=gen), 0)[idx]
        w = w.to(next(iter(losses.values())).device)
        self._set_weights(idx, w)
        return (w * self._stack(losses)).sum()


@register_weighting("gls")
class GLS(Weighting):
    """Geometric loss strategy (Chennupati et al., CVPR-W 2019): the losses' geometric mean.

    Geometric loss strategy (Chennupati et al., CVPR-W 2019): the geometric mean of the K
    losses, (prod_i L_i)^(1/K); task i's effective weight is that mean / (K L_i)."""

    arguments = {}

    def combine(self, losses: Mapping[str, Tensor], step: int) -> Tensor:
        stacked = self._stack(losses).clamp_min(1e-12)
        total = torch.exp(torch.log(stacked).mean())
        w = total.detach() / (len(stacked) * stacked.detach())
        self._set_weights(self._present(losses), w)
        return total


@register_weighting("famo")
class FAMO(Weighting):
    """FAMO (Liu et al., NeurIPS 2023): fast adaptive multitask optimisation, at ``fixed``'s cost.

    Fast adaptive multitask optimisation (Liu et al., NeurIPS 2023; the authors' ``famo.py``):
    logits xi (start 0), z = softmax(xi), loss = sum_i z_i log(L_i - min_i + eps) / c with
    c = sum_i z_i / (L_i - min_i + eps) detached; after each step xi moves by Adam (lr ``w_lr``
    0.025, weight decay ``gamma`` 0.01) along J_softmax^T delta, delta_i = log L_i(before) -
    log L_i(after). The authors measure "after" on the same batch with one more forward pass; here
    it is the next step's loss, which keeps FAMO at the cost of ``fixed`` (the O(1) the paper is
    about) at the price of the batch-to-batch noise in delta."""

    search_args = {"gamma": (0.001, 0.1)}
    # Adam's rate and weight decay on the logits (the paper: 0.025, 0.01), eps added to each loss
    arguments = {
        "w_lr": Number(0.0, 10.0, open_low=True),
        "gamma": Number(0.0, 10.0),
        "eps": Number(0.0, 1.0, open_low=True),
    }

    def __init__(
        self, tasks: Sequence[str], *, seed: int = 0, w_lr: float = 0.025, gamma: float = 0.01, eps: float = 1e-8
    ) -> None:
        super().__init__(tasks, seed=seed)
        self.logits = nn.Parameter(torch.zeros(len(self.tasks)), requires_grad=False)
        self.min_losses: Tensor
        self.prev: Tensor
        self.register_buffer("min_losses", torch.zeros(len(self.tasks)))
        self.register_buffer("prev", torch.full((len(self.tasks),), float("nan")))
        self.eps = float(eps)
        self.w_opt = torch.optim.Adam([self.logits], lr=float(w_lr), weight_decay=float(gamma))

    def combine(self, losses: Mapping[str, Tensor], step: int) -> Tensor:
        idx = self._present(losses)
        z = torch.softmax(self.logits, 0)[idx].to(next(iter(losses.values())).device)
        d = self._stack(losses) - self.min_losses[idx].to(z.device) + self.eps
        c = (z / d).sum().detach()
        self._set_weights(idx, z / (c * d))
        return (torch.log(d) * z / c).sum()

    def observe(self, losses: Mapping[str, float], step: int) -> None:
        # on the buffers' device; a task absent now or before gets delta 0 (no evidence this step)
        now = torch.tensor(self._history_row(losses), dtype=self.prev.dtype, device=self.prev.device)
        if not torch.isnan(now).all() and not torch.isnan(self.prev).all():
            self.update(self.prev, now)
        self.prev.copy_(torch.where(torch.isnan(now), self.prev, now))

    def update(self, before: Tensor, after: Tensor) -> None:
        """One FAMO step of the logits from the losses before and after an update."""
        delta = torch.log(before - self.min_losses + self.eps) - torch.log(after - self.min_losses + self.eps)
        delta = torch.nan_to_num(delta, nan=0.0)
        with torch.enable_grad():
            logits = self.logits.detach().requires_grad_(True)
            (d,) = torch.autograd.grad(torch.softmax(logits, 0), logits, grad_outputs=delta.float())
        self.w_opt.zero_grad()
        self.logits.grad = d
        self.w_opt.step()
        self.logits.grad = None
