"""The search, in one import: the study (``study``), the queue inside it (``queueing``), what a
trial does (``objective``), the worker process (``worker``), and which failures come back
(``recovery``). Each of those modules has one job; this one only gathers their public names, so
``from fusionsearch.search import prepare_study, run_worker`` keeps working.
"""

from __future__ import annotations

from . import objective as _objective
from . import queueing as _queueing
from . import study as _study
from . import worker as _worker
from .fusion import fusion_weights
from .objective import *  # noqa: F403 - each module's __all__ is its public part
from .queueing import *  # noqa: F403
from .study import *  # noqa: F403
from .worker import *  # noqa: F403

__all__ = [*_study.__all__, *_queueing.__all__, *_objective.__all__, *_worker.__all__, "fusion_weights"]
