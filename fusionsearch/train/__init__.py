"""Training one stitched network: the trainer (``trainer``: ``fit``, ``evaluate``), its settings
(``config``: ``TrainConfig``), its batches as a function of (seed, step) and their loaders
(``loading``), its numerics (``precision``: AMP types, the GradScaler, deterministic mode), the
BatchNorm calibration of new units before the first step (``calibration``), and the choice and
checks of a device (``devices``). Built on ``nets``, ``tasks`` and ``data``.

Exported: what trains and evaluates a net from Python, and its loaders; the rest is imported from
its module. Names load on first use (``registry.lazy_exports``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusionsearch.registry import lazy_exports

if TYPE_CHECKING:
    from fusionsearch.train.config import TrainConfig
    from fusionsearch.train.loading import eval_loader, train_loader
    from fusionsearch.train.trainer import NonFiniteLossError, evaluate, fit
else:
    __getattr__, __dir__, __all__ = lazy_exports(__name__)
