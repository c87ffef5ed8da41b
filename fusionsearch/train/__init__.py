"""Training one stitched network: the trainer (``trainer``: ``fit``, ``evaluate``, ``TrainConfig``),
the BatchNorm calibration of new units before the first step (``calibration``), and the choice
and checks of a device (``devices``). Built on ``nets``, ``tasks`` and ``data``.
"""

from __future__ import annotations

from fusionsearch.train.calibration import (
    calibrate_batchnorm,
    new_batchnorms,
)
from fusionsearch.train.devices import (
    assign_devices,
    check_device,
    use_device,
)
from fusionsearch.train.trainer import (
    BN_INITS,
    LOADER_STARTS,
    NonFiniteLossError,
    TrainConfig,
    amp_dtype,
    calibrate,
    calibrates,
    deterministic_mode,
    eval_loader,
    evaluate,
    evaluates_at,
    fit,
    item_seed,
    loader_workers,
    lr_factor,
    train_loader,
)

__all__ = [
    "TrainConfig",
    "NonFiniteLossError",
    "fit",
    "evaluate",
    "evaluates_at",
    "lr_factor",
    "calibrates",
    "calibrate",
    "BN_INITS",
    "amp_dtype",
    "deterministic_mode",
    "train_loader",
    "eval_loader",
    "loader_workers",
    "item_seed",
    "LOADER_STARTS",
    "new_batchnorms",
    "calibrate_batchnorm",
    "check_device",
    "assign_devices",
    "use_device",
]
