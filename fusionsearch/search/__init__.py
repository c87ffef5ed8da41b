"""The search: the study in its storage (``storage``, ``study``), the queue of trials inside it
(``queueing``), what a trial does (``objective``), which failures come back (``recovery``) and
how (``requeue``), the worker process (``worker``), the confirmation of the winners over seeds
(``confirm``), and a whole study in one call (``runner``). Built on ``experiment`` (the recipe,
its search space, the recipe made concrete), ``train``, ``nets``, ``tasks``, ``graph`` and ``data``.

Exported: what a user runs a study with, from Python as ``fusionsearch run`` does. The rest is
imported from its module (``from fusionsearch.search.queueing import pop``). The names load on
first use (``registry.lazy_exports``), so that importing one module of this package, such as
``fusionsearch.search.storage``, does not import plotly with the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusionsearch.registry import lazy_exports

if TYPE_CHECKING:
    from fusionsearch.search.confirm import Confirmation, ConfirmedPlan, summarize
    from fusionsearch.search.context import JobContext
    from fusionsearch.search.jobs import Job, PlanJob, register_job
    from fusionsearch.search.runner import StudyRun, run_study
    from fusionsearch.search.settings import StudySettings
    from fusionsearch.search.storage import open_storage
    from fusionsearch.search.study import load_study, prepare_confirmation, prepare_study
    from fusionsearch.search.worker import run_worker
else:
    __getattr__, __dir__, __all__ = lazy_exports(__name__)
