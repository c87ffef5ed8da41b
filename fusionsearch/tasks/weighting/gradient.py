"""The gradient-level methods: one backward pass per task, the task gradients on the parameters that
several tasks reach aggregated into one update (``GradientWeighting``): TorchJD's aggregators
(``upgrad``, ``mgda``, ``pcgrad``, ``cagrad``, ``aligned_mtl``, ``imtl_g``, ``nash_mtl``) and
DB-MTL (``dbmtl``, its own aggregation).

Cut from the loss-level methods, which need none of this machinery and none of TorchJD.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fusionsearch.errors import PlanError
from fusionsearch.tasks.weighting.arguments import Choice, Number, TaskVector
from fusionsearch.tasks.weighting.base import GRADIENT_LEVEL, Weighting, register_weighting

__all__ = [
    "GradientWeighting",
    "torchjd_aggregator",
    "UPGradMethod",
    "MGDAMethod",
    "PCGradMethod",
    "CAGradMethod",
    "AlignedMTLMethod",
    "IMTLGMethod",
    "NashMTLMethod",
    "DBMTL",
]


class GradientWeighting(Weighting):
    """A gradient-level method: per-task gradients on the parameters several tasks reach,
    aggregated by a TorchJD aggregator (``aggregator()``); see the package docstring."""

    level = GRADIENT_LEVEL
    extra_requirement = ""  # the torchjd extra the aggregator needs, if any
    torchjd = ""  # the TorchJD aggregator class ``aggregator_from`` builds, if one (checks its arguments)

    def __init__(self, tasks: Sequence[str], *, seed: int = 0, **args: Any) -> None:
        super().__init__(tasks, seed=seed)
        # YAML has lists, TorchJD wants tensors (``pref_vector: [1, 2]``)
        args = {k: torch.tensor(v, dtype=torch.float32) if isinstance(v, list) else v for k, v in args.items()}
        try:
            self.aggregator = self.aggregator_from(**args)
        except ImportError as e:
            extra = self.extra_requirement or "torchjd"
            raise PlanError(
                f"weighting {self.weighting_name!r} needs {extra} (pip install 'fusionsearch[cvx]'): {e}"
            ) from None

    @abstractmethod
    def aggregator_from(self, **args: Any) -> Any:
        """The TorchJD aggregator, built from the method's arguments."""

    def backward(
        self, losses: Mapping[str, Tensor], extra: Tensor, net: nn.Module, step: int, scale: Callable[[Tensor], Tensor]
    ) -> Tensor:
        params = [p for p in net.parameters() if p.requires_grad]
        idx = self._present(losses)  # partial labels: only the tasks this batch labels take part
        self._weights = {t: 1.0 if t in losses else 0.0 for t in self.tasks}  # aggregators refine it
        per_task = []
        for k, i in enumerate(idx):
            retain = k < len(idx) - 1 or bool(extra.requires_grad)
            loss = scale(losses[self.tasks[i]])
            per_task.append(torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True))
        shared = [j for j in range(len(params)) if sum(g[j] is not None for g in per_task) > 1]
        for j, p in enumerate(params):
            if j not in shared:
                own = [g[j] for g in per_task if g[j] is not None]
                p.grad = own[0] if own else None
        if shared:
            rows = [
                torch.cat([(g[j] if g[j] is not None else torch.zeros_like(params[j])).flatten() for j in shared])
                for g in per_task
            ]
            # the aggregators see true gradients: under fp16 the rows are the GradScaler's scale S
            # times them, and Nash-MTL's norm clip or DB-MTL's running average (which mixes steps
            # of different S) would then depend on S; the update goes back to scaled space after
            factor = scale(torch.ones((), device=rows[0].device)).float()
            jacobian = torch.stack(rows).float() / factor
            vector = self._aggregate(jacobian, idx) * factor
            start = 0
            for j in shared:
                n = params[j].numel()
                params[j].grad = vector[start : start + n].view_as(params[j]).to(params[j].dtype)
                start += n
        if extra.requires_grad:
            scale(extra).backward()  # accumulates onto the grads set above
        return self._stack(losses).sum().detach() + extra.detach()

    def _aggregate(self, jacobian: Tensor, idx: Sequence[int] | None = None) -> Tensor:
        """One update from the rows of ``jacobian``: the gradients of the tasks ``idx`` (default: all)."""
        idx = range(len(jacobian)) if idx is None else idx
        if not torch.isfinite(jacobian).all() or not jacobian.abs().sum() > 0:
            # nothing to balance (every shared gradient is zero) or already broken: the plain sum,
            # whose NaN the trainer's check then reports; solvers (Nash-MTL's) reject such input
            return jacobian.sum(0)
        weighting = getattr(self.aggregator, "weighting", None)
        if weighting is not None:  # weighted aggregators: log their weights
            w = weighting(jacobian)
            self._set_weights(idx, w)
            return w @ jacobian
        return self.aggregator(jacobian)


def torchjd_aggregator(name: str) -> Any:
    import torchjd.aggregation as agg

    return getattr(agg, name)


@register_weighting("upgrad")
class UPGradMethod(GradientWeighting):
    """UPGrad (Quinton and Rey, 2024): task gradients projected onto their dual cone, averaged.

    UPGrad (Quinton and Rey, 2024): each task gradient projected onto the dual cone of all of
    them, then averaged; never conflicts with any task."""

    torchjd = "UPGrad"
    # TorchJD's ``projector`` is an object: no recipe can give one
    arguments = {"pref_vector": TaskVector()}

    def aggregator_from(self, **args: Any) -> Any:
        return torchjd_aggregator("UPGrad")(**args)


@register_weighting("mgda")
class MGDAMethod(GradientWeighting):
    """MGDA (Sener and Koltun, NeurIPS 2018): the min-norm point of the task gradients' convex hull."""

    torchjd = "MGDA"
    # its Frank-Wolfe solver runs up to max_iters iterations at every step
    arguments = {"epsilon": Number(0.0, 1.0), "max_iters": Number(1, 10_000, whole=True)}

    def aggregator_from(self, **args: Any) -> Any:
        return torchjd_aggregator("MGDA")(**args)


@register_weighting("pcgrad")
class PCGradMethod(GradientWeighting):
    """PCGrad (Yu et al., NeurIPS 2020): conflicting task gradients projected apart, summed.

    PCGrad (Yu et al., NeurIPS 2020): a gradient that conflicts with another (negative inner
    product) loses its component along it; the projected gradients are summed."""

    torchjd = "PCGrad"
    arguments = {}

    def aggregator_from(self, **args: Any) -> Any:
        return torchjd_aggregator("PCGrad")(**args)


@register_weighting("cagrad")
class CAGradMethod(GradientWeighting):
    """CAGrad (Liu et al., NeurIPS 2021): conflict-averse gradient descent; needs cvxpy.

    CAGrad (Liu et al., NeurIPS 2021), ``c`` = 0.5 as its paper's default; needs cvxpy
    (``torchjd[cagrad]``)."""

    torchjd = "CAGrad"

    extra_requirement = "torchjd[cagrad] (cvxpy)"
    search_args = {"c": (0.1, 0.9)}
    arguments = {"c": Number(0.0, 1.0, open_high=True), "norm_eps": Number(0.0, 1.0)}

    def aggregator_from(self, c: float = 0.5, **args: Any) -> Any:
        return torchjd_aggregator("CAGrad")(c=c, **args)


@register_weighting("aligned_mtl")
class AlignedMTLMethod(GradientWeighting):
    """Aligned-MTL (Senushkin et al., CVPR 2023): the task gradients' system made well conditioned."""

    torchjd = "AlignedMTL"
    arguments = {"pref_vector": TaskVector(), "scale_mode": Choice(("min", "median", "rmse"))}

    def aggregator_from(self, **args: Any) -> Any:
        return torchjd_aggregator("AlignedMTL")(**args)


@register_weighting("imtl_g")
class IMTLGMethod(GradientWeighting):
    """IMTL-G (Liu et al., ICLR 2021): an update with equal projections on every task gradient.

    IMTL-G (Liu et al., ICLR 2021): weights that give the update equal projections on every task
    gradient's direction."""

    torchjd = "IMTLG"
    arguments = {}

    def aggregator_from(self, **args: Any) -> Any:
        return torchjd_aggregator("IMTLG")(**args)


@register_weighting("nash_mtl")
class NashMTLMethod(GradientWeighting):
    """Nash-MTL (Navon et al., ICML 2022): the Nash bargaining solution; needs cvxpy and ecos.

    Nash-MTL (Navon et al., ICML 2022): the Nash bargaining solution; needs cvxpy and ecos
    (``torchjd[nash-mtl]``)."""

    torchjd = "NashMTL"

    extra_requirement = "torchjd[nash-mtl] (cvxpy, ecos)"
    # optim_niter: the solver's iterations at each weight update, every update_weights_every steps
    arguments = {
        "max_norm": Number(0.0, 1e6),  # 0: no clipping
        "update_weights_every": Number(1, 1_000_000, whole=True),
        "optim_niter": Number(1, 1_000, whole=True),
    }

    def aggregator_from(self, **args: Any) -> Any:
        return torchjd_aggregator("NashMTL")(n_tasks=len(self.tasks), **args)


class _BalancedEMA(nn.Module):
    """DB-MTL's aggregation (LibMTL ``DB_MTL.py``): an EMA of each task's gradient, buffer =
    g + (beta / t^sigma) (buffer - g), then each row rescaled to the largest row's norm and summed."""

    def __init__(self, beta: float, sigma: float) -> None:
        super().__init__()
        self.beta, self.sigma = float(beta), float(sigma)
        self.t = 0
        self.buffer: Tensor | None = None

    def __call__(self, jacobian: Tensor, rows: Sequence[int] | None = None, k: int | None = None) -> Tensor:
        """``jacobian``'s rows are the gradients of tasks ``rows`` of ``k`` (default: all): the
        absent tasks' averages wait unchanged and take no part in this step's sum."""
        rows = list(range(len(jacobian))) if rows is None else list(rows)
        k = len(jacobian) if k is None else k
        self.t += 1
        shape = (k, jacobian.shape[1])
        if self.buffer is None or self.buffer.shape != shape:
            self.buffer = torch.zeros(shape, dtype=jacobian.dtype, device=jacobian.device)
        mine = self.buffer[rows]
        mine = jacobian + (self.beta / self.t**self.sigma) * (mine - jacobian)
        self.buffer[rows] = mine
        norms = mine.norm(dim=1)
        alpha = norms.max() / (norms + 1e-8)
        self.last_alpha = alpha.detach()
        return (alpha[:, None] * mine).sum(0)


@register_weighting("dbmtl")
class DBMTL(GradientWeighting):
    """DB-MTL (Lin et al., 2023): loss-scale then gradient-magnitude balancing, as LibMTL's.

    DB-MTL (Lin et al., 2023, "Dual-Balancing for Multi-Task Learning"), as LibMTL's
    ``DB_MTL.py``: loss-scale balancing by a log transform (each task's loss becomes
    log(L_i + 1e-8), so its gradient is grad L_i / L_i), then gradient-magnitude balancing: an EMA
    of each task's gradient (``beta`` 0.9, ``sigma`` 0: LibMTL's defaults), each scaled to the
    largest one's norm, summed. The task-specific parameters take the gradient of their task's
    log loss, as in LibMTL."""

    search_args = {"beta": (0.5, 0.99)}
    # beta: an average's weight on the past (1 never forgets); sigma: t^sigma must stay a float
    arguments = {"beta": Number(0.0, 1.0, open_high=True), "sigma": Number(0.0, 10.0)}

    def aggregator_from(self, beta: float = 0.9, sigma: float = 0.0, **args: Any) -> Any:
        if args:
            raise TypeError(f"unexpected argument(s) {sorted(args)}")
        return _BalancedEMA(beta, sigma)

    def _aggregate(self, jacobian: Tensor, idx: Sequence[int] | None = None) -> Tensor:
        if not torch.isfinite(jacobian).all() or not jacobian.abs().sum() > 0:
            return jacobian.sum(0)
        return self.aggregator(jacobian, idx, len(self.tasks))

    def backward(
        self, losses: Mapping[str, Tensor], extra: Tensor, net: nn.Module, step: int, scale: Callable[[Tensor], Tensor]
    ) -> Tensor:
        logs = {t: torch.log(v + 1e-8) for t, v in losses.items()}
        self.aggregator.last_alpha = None
        super().backward(logs, extra, net, step, scale)
        alpha = getattr(self.aggregator, "last_alpha", None)
        if alpha is not None:  # effective weight of task i on the shared parameters: alpha_i / L_i
            present = [t for t in self.tasks if t in losses]
            self._weights = {t: 0.0 for t in self.tasks}
            self._weights.update(
                {t: float(a) / max(float(losses[t].detach()), 1e-8) for t, a in zip(present, alpha.tolist())}
            )
        return self._stack(losses).sum().detach() + extra.detach()
