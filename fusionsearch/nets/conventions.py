"""What the papers' fusion learning-rate multipliers become under each optimiser, in one place.

NDDR-CNN (Table 2) and cross-stitch networks (Table 2) chose fusion multipliers of 10^2..10^3
under plain SGD with momentum. There a parameter's step is lr x its gradient, and the gradient of
a mixing weight is tiny next to a conv weight's, so the multiplier is what lets the fusion
weights move at all. AdamW divides each parameter's step by a running RMS of its own gradient:
every parameter moves about ``lr`` a step whatever its gradient's size, so the same x100 moves
each of NDDR's C x KC dense weights by 100 x lr a step in a direction that is mostly noise, and
the projection stops being the identity-like mix it started as within a few steps.

So a plan that does not name a multiplier gets the one below for the optimiser it trains with:

- ``sgd``: the papers' values (x100 for every unit and the NDDR-Shortcut: the official code's
  ``--nddr-mult`` 100 covers both).
- ``adamw``: chosen by measurement on the default study's fine-tuning (``benchmarks/fusion_start.py``,
  3 seeds each of x1, x10, x100; the Delta-m of each is in the README, Benchmarks): NDDR and the
  NDDR-Shortcut, dense 1x1 projections, at x1; cross-stitch, one scalar per channel and task pair,
  keeps x100; sluice, whose (K m)^2 alpha mixes whole subspaces, at x10 with its beta mix at x10. Under AdamW
  a scalar alpha of 0.9 moving ``lr x mult`` a step changes relatively little, while a dense row
  of KC weights accumulates about ``sqrt(KC) x lr x mult`` of noise a step.

A multiplier the recipe or plan writes (``unit_args: {lr_mult: 100}``) is kept as written. The
search's ``lr_scale`` range is relative to the value here, so "x0.1 .. x10 of the papers'
default" means the same thing under SGD and AdamW (the papers' Table 2 range 1..1000 under SGD).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "OPTIMIZERS",
    "PAPER_OPTIMIZER",
    "FUSION_LR_MULT",
    "fusion_lr_mult",
    "describe_lr_mults",
    "describe_bn_init",
]

OPTIMIZERS = ("sgd", "adamw")
PAPER_OPTIMIZER = "sgd"  # what NDDR-CNN and cross-stitch networks tuned their multipliers with

# optimiser -> fusion component -> multiplier of base_lr. Components: the registered unit names,
# "shortcut" (NDDR-Shortcut's conv-BN-ReLU) and "sluice_beta" (sluice's head-input mix)
FUSION_LR_MULT: dict[str, dict[str, float]] = {
    "sgd": {"nddr": 100.0, "cross_stitch": 100.0, "sluice": 100.0, "shortcut": 100.0, "sluice_beta": 100.0},
    "adamw": {"nddr": 1.0, "cross_stitch": 100.0, "sluice": 10.0, "shortcut": 1.0, "sluice_beta": 10.0},
}
# a unit registered outside this table: its class's ``default_lr_mult`` under SGD (the papers'
# convention), and x1 under AdamW (steps already normalised per parameter)
ADAMW_FALLBACK = 1.0


def fusion_lr_mult(component: str, optimizer: str, sgd_default: float = 100.0) -> float:
    """The multiplier a fusion component trains at when its plan names none.

    Args:
        component: a unit name (``nddr``, ``cross_stitch``, ``sluice``, ...), ``shortcut`` or
            ``sluice_beta``.
        optimizer: ``sgd`` or ``adamw`` (``TrainConfig.optimizer``).
        sgd_default: the value for a component this table does not know, under SGD (a unit
            class's ``default_lr_mult``).

    >>> fusion_lr_mult("nddr", "sgd"), fusion_lr_mult("nddr", "adamw")
    (100.0, 1.0)
    """
    if optimizer not in FUSION_LR_MULT:
        raise ValueError(f"unknown optimizer {optimizer!r}: use {' or '.join(OPTIMIZERS)}")
    table: Mapping[str, float] = FUSION_LR_MULT[optimizer]
    if component in table:
        return float(table[component])
    return float(sgd_default) if optimizer == "sgd" else ADAMW_FALLBACK


def describe_lr_mults(optimizer: str) -> str:
    """One line for ``run``/``compare``: which multipliers a plan without its own gets, and why."""
    table = FUSION_LR_MULT.get(optimizer, {})
    values = ", ".join(f"{k} x{v:g}" for k, v in table.items())
    if optimizer == PAPER_OPTIMIZER:
        return f"fusion learning rates: the papers' SGD multipliers ({values}) where a plan names none"
    return (
        f"fusion learning rates: the papers' SGD multipliers translated for {optimizer} ({values})"
        " where a plan names none; see README Conventions"
    )


def describe_bn_init(bn_init: str, batches: int) -> str:
    """One line for ``run``/``compare``: how the BatchNorm that fusion adds starts (``train.bn_init``)."""
    if bn_init == "paper":
        return "new BatchNorm in fusion units: the papers' start (statistics 0/1, affine 1/0), train.bn_init: paper"
    calibrated = f"calibrated on {batches} training batches to start as the unit's input mix"
    if bn_init == "calibrated":
        return f"new BatchNorm in fusion units: {calibrated} (train.bn_init: calibrated)"
    return (
        f"new BatchNorm in fusion units: {calibrated} when the columns are trained (warm start), the papers'"
        " start otherwise (train.bn_init: auto)"
    )
