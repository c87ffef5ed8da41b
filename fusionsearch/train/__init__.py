"""Training one stitched network: the trainer (``trainer``: ``fit``, ``evaluate``), its settings
(``config``: ``TrainConfig``), its batches as a function of (seed, step) and their loaders
(``loading``), its numerics (``precision``: AMP types, the GradScaler, deterministic mode), the
BatchNorm calibration of new units before the first step (``calibration``), and the choice and
checks of a device (``devices``). Built on ``nets``, ``tasks`` and ``data``.
"""

from __future__ import annotations

from fusionsearch.train.calibration import (
    calibrate_batchnorm,
    new_batchnorms,
)
from fusionsearch.train.config import (
    BN_INITS,
    LOADER_STARTS,
    MAX_LOADER_WORKERS,
    TrainConfig,
)
from fusionsearch.train.devices import (
    assign_devices,
    check_device,
    latency_ms,
    use_device,
)
from fusionsearch.train.loading import (
    AUTO_LOADER_WORKERS,
    Seeded,
    StepSampler,
    eval_loader,
    item_seed,
    loader_workers,
    train_loader,
)
from fusionsearch.train.precision import (
    amp_dtype,
    autocast,
    deterministic_mode,
    grad_scaler,
)
from fusionsearch.train.trainer import (
    NonFiniteLossError,
    calibrate,
    calibrates,
    evaluate,
    evaluates_at,
    fit,
    lr_factor,
    make_optimizer,
    to_device,
)

__all__ = [
    "TrainConfig",
    "to_device",
    "NonFiniteLossError",
    "fit",
    "evaluate",
    "evaluates_at",
    "lr_factor",
    "calibrates",
    "calibrate",
    "make_optimizer",
    "BN_INITS",
    "amp_dtype",
    "autocast",
    "grad_scaler",
    "deterministic_mode",
    "train_loader",
    "eval_loader",
    "loader_workers",
    "item_seed",
    "StepSampler",
    "Seeded",
    "LOADER_STARTS",
    "MAX_LOADER_WORKERS",
    "AUTO_LOADER_WORKERS",
    "new_batchnorms",
    "calibrate_batchnorm",
    "check_device",
    "assign_devices",
    "use_device",
    "latency_ms",
]
