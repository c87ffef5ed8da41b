"""Task weighting and gradient balancing: how K task losses become one update.

A method is one ``Weighting`` subclass with ``@register_weighting("name")``; training, recipes
(``train.weighting: {name: ..., args: {...}}``), ``fusionsearch train --weighting NAME`` and the
search's ``weighting`` dimension find it in the registry.

Two levels:

- *loss-level* methods turn the K losses into one scalar, then one backward pass: ``fixed``
  (the tasks' own ``loss_weight``), ``uncertainty`` (Kendall et al. 2018), ``dwa`` (Liu et al.
  2019), ``rlw`` (random loss weighting, Lin et al. 2022), ``gls`` (geometric loss strategy,
  Chennupati et al. 2019), ``famo`` (Liu et al. 2023). They work on any stitched net at the cost of
  ``fixed`` plus a few scalar operations.
- *gradient-level* methods (TorchJD's aggregators: ``upgrad``, ``mgda``, ``pcgrad``, ``cagrad``,
  ``aligned_mtl``, ``imtl_g``, ``nash_mtl``) take one backward pass per task. Every trainable
  parameter that more than one task's loss reaches (the shared trunk, the fusion units, and the
  columns before the last fusion unit, which the units mix into every task) gets the aggregation
  of the K task gradients; a parameter only one task reaches (its column after the last unit, its
  head) gets that task's gradient. Each task's loss includes its ``loss_weight``; an extra loss
  (sluice's penalty) is added with weight 1 on top.

Partial labels: a task that the step's batch labels on no image is absent from that step's
``losses``. It then contributes nothing (zero gradient, weight 0 for the step): loss-level methods
combine the tasks present, gradient-level methods aggregate the present tasks' gradients (one
present task: its gradient as it is), and histories (``dwa``, ``famo``) skip the absent task.

Where the implementations differ from the papers' code, the method's docstring says so.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from fusionsearch.errors import PlanError
from fusionsearch.registry import Registry
from fusionsearch.schema import check_call

__all__ = [
    "WEIGHTINGS",
    "Weighting",
    "GradientWeighting",
    "register_weighting",
    "get_weighting",
    "make_weighting",
    "LOSS_LEVEL",
    "GRADIENT_LEVEL",
]

WEIGHTINGS: Registry[type[Weighting]] = Registry("weighting method", PlanError, name_attr="weighting_name")
LOSS_LEVEL, GRADIENT_LEVEL = "loss", "gradient"


def register_weighting(name: str) -> Callable[[type[Weighting]], type[Weighting]]:
    """Class decorator: make a weighting method available by ``name``."""
    return WEIGHTINGS.register(name)


def get_weighting(name: str) -> type[Weighting]:
    return WEIGHTINGS.get(name)


def make_weighting(
    spec: str | Mapping[str, Any] | None, tasks: Sequence[str], seed: int = 0, where: str = "weighting"
) -> Weighting:
    """A method from a name or ``{name: ..., args: {...}}`` (None: ``fixed``); ``where`` is the
    field an error names (``train.weighting``)."""
    if spec is None:
        spec = {"name": "fixed"}
    if isinstance(spec, str):
        spec = {"name": spec}
    unknown = set(spec) - {"name", "args"}
    if unknown:
        raise PlanError(f"weighting takes name and args, not {sorted(unknown)}")
    cls = get_weighting(str(spec.get("name", "fixed")))
    args = {} if spec.get("args") is None else spec["args"]
    if not isinstance(args, Mapping):
        raise PlanError(f"weighting {cls.weighting_name!r}: args must be a mapping, got {args!r}")
    # the signature is the schema: a typo or a string where a number goes names itself here,
    # before any study exists, instead of failing every trial's first step
    where = f"{where}.args"
    check_call(cls, args, where, PlanError, given=("tasks", "seed"))
    if issubclass(cls, GradientWeighting):
        check_call(cls.aggregator_from, args, where, PlanError)
        if cls.torchjd:  # what aggregator_from passes on goes to TorchJD's class: its signature too
            import inspect

            ours = inspect.signature(cls.aggregator_from).parameters.values()
            defaults = {p.name: p.default for p in ours if p.default is not p.empty}  # CAGrad's c = 0.5
            check_call(_torchjd(cls.torchjd), {**defaults, **args}, where, PlanError, given=("n_tasks",))
    try:
        return cls(list(tasks), seed=seed, **dict(args))
    except PlanError:
        raise
    except (TypeError, ValueError) as e:
        raise PlanError(f"bad arguments for weighting {cls.weighting_name!r}: {e}") from None


def _check_range(
    method: str,
    name: str,
    value: float,
    low: float,
    high: float = float("inf"),
    *,
    open_low: bool = False,
    open_high: bool = True,
) -> None:
    """``value`` within [low, high) (``open_low``: (low, ...)), else a PlanError naming the argument."""
    below = value <= low if open_low else value < low
    above = value >= high if open_high else value > high
    if below or above:
        lo, hi = ("(" if open_low else "["), (")" if open_high else "]")
        raise PlanError(f"weighting {method!r}: {name} must be in {lo}{low:g}, {high:g}{hi}, got {value!r}")


class Weighting(nn.Module, ABC):
    """A weighting method. This docstring is the contract.

    Constructor: ``Method(tasks, *, seed=0, **own)``: the task names in the net's order, a seed
    for methods that draw (``rlw``), and the method's own arguments (recipe ``args``).

    Class attributes: ``level`` (``"loss"`` or ``"gradient"``), ``lr_mult`` (learning-rate
    multiplier of its learned parameters, if any), ``search_args`` (argument -> [low, high], drawn
    log-uniformly when a study searches the method).

    Methods:

    - ``backward(losses, extra, net, step, scale)``: put the update's gradient in the ``.grad`` of
      the net's parameters (and of the method's own, if it learns any); ``losses`` maps each task
      that the step's batch labels to its loss (``loss_weight`` applied; never empty, and a task
      with no label in the batch is absent, see the module docstring), ``extra`` is the units'
      extra loss, ``scale`` the AMP scaler's ``scale``. Returns the scalar that stands for the
      step's loss (for logging and the NaN check). Loss-level methods implement
      ``combine(losses, step)`` instead and inherit this.
    - ``observe(losses, step)``: the step's detached task losses (the tasks present), after the
      optimiser's step (loss histories of ``dwa``, ``famo``'s weight update).
    - ``weights()``: the effective weight of each task at the last step (what the report plots).
    - ``param_groups(base_lr)``: optimiser groups of its learned parameters (none by default).

    Its state (learned parameters, histories) is in ``state_dict``: checkpoints save it.
    """

    weighting_name = "base"  # set by ``register_weighting``
    level: ClassVar[str] = LOSS_LEVEL
    lr_mult: ClassVar[float] = 1.0
    # arguments a search may draw, as log-uniform [low, high] ranges (conditional on the method)
    search_args: ClassVar[dict[str, tuple[float, float]]] = {}

    def __init__(self, tasks: Sequence[str], *, seed: int = 0) -> None:
        super().__init__()
        if not tasks:
            raise PlanError("a weighting needs at least one task")
        self.tasks = list(tasks)
        self.seed = seed
        self._weights: dict[str, float] = {t: 1.0 for t in self.tasks}

    def combine(self, losses: Mapping[str, Tensor], step: int) -> Tensor:
        raise NotImplementedError(f"{self.weighting_name} is a gradient-level method: it has no combined loss")

    def backward(
        self, losses: Mapping[str, Tensor], extra: Tensor, net: nn.Module, step: int, scale: Callable[[Tensor], Tensor]
    ) -> Tensor:
        total = self.combine(losses, step) + extra
        scale(total).backward()
        return total

    def observe(self, losses: Mapping[str, float], step: int) -> None:
        """Called after each optimiser step with the step's task losses."""

    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return []
        return [{"name": f"weighting:{self.weighting_name}", "params": params, "lr": base_lr * self.lr_mult,
                 "lr_mult": self.lr_mult, "weight_decay": 0.0}]  # fmt: skip

    def _present(self, losses: Mapping[str, Tensor]) -> list[int]:
        """Indices (in ``self.tasks``) of the tasks this step labels, in the net's order."""
        return [i for i, t in enumerate(self.tasks) if t in losses]

    def _stack(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The present tasks' losses, in the net's order."""
        return torch.stack([losses[t].float() for t in self.tasks if t in losses])

    def _set_weights(self, idx: Sequence[int], w: Tensor) -> None:
        """Log the step's weights: ``w`` for the present tasks ``idx``, 0 for the absent."""
        values = w.detach().float().tolist()
        self._weights = {t: 0.0 for t in self.tasks}
        self._weights.update({self.tasks[i]: v for i, v in zip(idx, values)})

    def _history_row(self, losses: Mapping[str, float]) -> list[float]:
        return [float(losses[t]) if t in losses else float("nan") for t in self.tasks]


# ---- loss level -----------------------------------------------------------------------------------


@register_weighting("fixed")
class Fixed(Weighting):
    """The tasks' own ``loss_weight`` (recipe ``task_args``), summed: the papers' training."""

    def combine(self, losses: Mapping[str, Tensor], step: int) -> Tensor:
        self._weights = {t: 1.0 if t in losses else 0.0 for t in self.tasks}
        return self._stack(losses).sum()


@register_weighting("uncertainty")
class Uncertainty(Weighting):
    """Homoscedastic uncertainty (Kendall, Gal and Cipolla, CVPR 2018), as LibMTL's ``UW``:
    loss = sum_i L_i / (2 exp(s_i)) + s_i / 2 with learned log-variances s_i (start 0), so a task's
    weight is 1 / (2 exp(s_i)). The s_i train at the base learning rate and are saved with the
    training state."""

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
    """Dynamic weight average (Liu, Johns and Davison, CVPR 2019): w_i = K exp(r_i / T) /
    sum_j exp(r_j / T) with r_i the ratio of task i's mean loss over the last ``period`` steps to
    its mean over the ``period`` before, T = ``temperature`` (2); weight 1 until two periods have
    passed. The mtan code uses epoch means; a period of steps is that for step-budgeted training."""

    search_args = {"temperature": (1.0, 4.0)}

    def __init__(self, tasks: Sequence[str], *, seed: int = 0, temperature: float = 2.0, period: int = 20) -> None:
        super().__init__(tasks, seed=seed)
        _check_range("dwa", "temperature", temperature, 0.0, open_low=True)
        _check_range("dwa", "period", period, 1)
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
    """Random loss weighting (Lin et al., TMLR 2022), as LibMTL: each step w = softmax(z), z ~ N(0, I),
    drawn from (seed, step) so that a resumed run draws the same weights."""

    def combine(self, losses: Mapping[str, Tensor], step: int) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = self._present(losses)
        w = torch.softmax(torch.randn(len(self.tasks), generator=gen), 0)[idx]
        w = w.to(next(iter(losses.values())).device)
        self._set_weights(idx, w)
        return (w * self._stack(losses)).sum()


@register_weighting("gls")
class GLS(Weighting):
    """Geometric loss strategy (Chennupati et al., CVPR-W 2019): the geometric mean of the K
    losses, (prod_i L_i)^(1/K); task i's effective weight is that mean / (K L_i)."""

    def combine(self, losses: Mapping[str, Tensor], step: int) -> Tensor:
        stacked = self._stack(losses).clamp_min(1e-12)
        total = torch.exp(torch.log(stacked).mean())
        w = total.detach() / (len(stacked) * stacked.detach())
        self._set_weights(self._present(losses), w)
        return total


@register_weighting("famo")
class FAMO(Weighting):
    """Fast adaptive multitask optimisation (Liu et al., NeurIPS 2023; the authors' ``famo.py``):
    logits xi (start 0), z = softmax(xi), loss = sum_i z_i log(L_i - min_i + eps) / c with
    c = sum_i z_i / (L_i - min_i + eps) detached; after each step xi moves by Adam (lr ``w_lr``
    0.025, weight decay ``gamma`` 0.01) along J_softmax^T delta, delta_i = log L_i(before) -
    log L_i(after). The authors measure "after" on the same batch with one more forward pass; here
    it is the next step's loss, which keeps FAMO at the cost of ``fixed`` (the O(1) the paper is
    about) at the price of the batch-to-batch noise in delta."""

    search_args = {"gamma": (0.001, 0.1)}

    def __init__(
        self, tasks: Sequence[str], *, seed: int = 0, w_lr: float = 0.025, gamma: float = 0.01, eps: float = 1e-8
    ) -> None:
        super().__init__(tasks, seed=seed)
        _check_range("famo", "w_lr", w_lr, 0.0, open_low=True)
        _check_range("famo", "gamma", gamma, 0.0)
        _check_range("famo", "eps", eps, 0.0, open_low=True)
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


# ---- gradient level (TorchJD) ---------------------------------------------------------------------


class GradientWeighting(Weighting):
    """A gradient-level method: per-task gradients on the parameters several tasks reach,
    aggregated by a TorchJD aggregator (``aggregator()``); see the module docstring."""

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


def _torchjd(name: str) -> Any:
    import torchjd.aggregation as agg

    return getattr(agg, name)


@register_weighting("upgrad")
class UPGradMethod(GradientWeighting):
    """UPGrad (Quinton and Rey, 2024): each task gradient projected onto the dual cone of all of
    them, then averaged; never conflicts with any task."""

    torchjd = "UPGrad"

    def aggregator_from(self, **args: Any) -> Any:
        return _torchjd("UPGrad")(**args)


@register_weighting("mgda")
class MGDAMethod(GradientWeighting):
    """MGDA (Sener and Koltun, NeurIPS 2018): the min-norm point of the task gradients' convex hull."""

    torchjd = "MGDA"

    def aggregator_from(self, **args: Any) -> Any:
        return _torchjd("MGDA")(**args)


@register_weighting("pcgrad")
class PCGradMethod(GradientWeighting):
    """PCGrad (Yu et al., NeurIPS 2020): a gradient that conflicts with another (negative inner
    product) loses its component along it; the projected gradients are summed."""

    torchjd = "PCGrad"

    def aggregator_from(self, **args: Any) -> Any:
        return _torchjd("PCGrad")(**args)


@register_weighting("cagrad")
class CAGradMethod(GradientWeighting):
    """CAGrad (Liu et al., NeurIPS 2021), ``c`` = 0.5 as its paper's default; needs cvxpy
    (``torchjd[cagrad]``)."""

    torchjd = "CAGrad"

    extra_requirement = "torchjd[cagrad] (cvxpy)"
    search_args = {"c": (0.1, 0.9)}

    def aggregator_from(self, c: float = 0.5, **args: Any) -> Any:
        _check_range("cagrad", "c", c, 0.0, 1.0)
        return _torchjd("CAGrad")(c=c, **args)


@register_weighting("aligned_mtl")
class AlignedMTLMethod(GradientWeighting):
    """Aligned-MTL (Senushkin et al., CVPR 2023): the task gradients' system made well conditioned."""

    torchjd = "AlignedMTL"

    def aggregator_from(self, **args: Any) -> Any:
        return _torchjd("AlignedMTL")(**args)


@register_weighting("imtl_g")
class IMTLGMethod(GradientWeighting):
    """IMTL-G (Liu et al., ICLR 2021): weights that give the update equal projections on every task
    gradient's direction."""

    torchjd = "IMTLG"

    def aggregator_from(self, **args: Any) -> Any:
        return _torchjd("IMTLG")(**args)


@register_weighting("nash_mtl")
class NashMTLMethod(GradientWeighting):
    """Nash-MTL (Navon et al., ICML 2022): the Nash bargaining solution; needs cvxpy and ecos
    (``torchjd[nash-mtl]``)."""

    torchjd = "NashMTL"

    extra_requirement = "torchjd[nash-mtl] (cvxpy, ecos)"

    def aggregator_from(self, **args: Any) -> Any:
        return _torchjd("NashMTL")(n_tasks=len(self.tasks), **args)


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
    """DB-MTL (Lin et al., 2023, "Dual-Balancing for Multi-Task Learning"), as LibMTL's
    ``DB_MTL.py``: loss-scale balancing by a log transform (each task's loss becomes
    log(L_i + 1e-8), so its gradient is grad L_i / L_i), then gradient-magnitude balancing: an EMA
    of each task's gradient (``beta`` 0.9, ``sigma`` 0: LibMTL's defaults), each scaled to the
    largest one's norm, summed. The task-specific parameters take the gradient of their task's
    log loss, as in LibMTL."""

    search_args = {"beta": (0.5, 0.99)}

    def aggregator_from(self, beta: float = 0.9, sigma: float = 0.0, **args: Any) -> Any:
        if args:
            raise TypeError(f"unexpected argument(s) {sorted(args)}")
        _check_range("dbmtl", "beta", beta, 0.0, 1.0)  # an average's weight on the past: beta >= 1 never forgets
        _check_range("dbmtl", "sigma", sigma, 0.0)
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
