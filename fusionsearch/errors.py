"""Exceptions of fusionsearch.

Every error a user can cause has its own class, so that scripts can catch exactly what they expect
and the command line can print a one-line reason instead of a traceback.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "CheckpointError",
    "DataError",
    "FusionSearchWarning",
    "DependencyError",
    "DeviceError",
    "StorageError",
    "UntrustedFileError",
    "MissingDataError",
    "NothingToDraw",
    "CutPointError",
    "FusionSearchError",
    "PlanError",
    "TraceError",
    "UnknownBackboneError",
]


class FusionSearchWarning(UserWarning):
    """What fusionsearch warns of (a backbone with fewer cut points than stages, a figure not
    saved): one category, so a caller silences ours with ``warnings.simplefilter("ignore",
    FusionSearchWarning)`` and nobody else's."""


class FusionSearchError(Exception):
    """Base class of every error fusionsearch raises on purpose."""


class UnknownBackboneError(FusionSearchError, ValueError):
    """A backbone name that timm does not know."""

    def __init__(self, name: str, suggestions: list[str]) -> None:
        self.name = name
        self.suggestions = suggestions
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(
            f"unknown backbone {name!r}: timm has no model of that name.{hint}"
            " (`timm.list_models('*pattern*')` lists the names.)"
        )


class TraceError(FusionSearchError, RuntimeError):
    """torch.fx could not trace a backbone, or the traced graph does not reproduce it."""

    def __init__(
        self,
        message: str,
        module_path: str | None = None,
        module_type: str | None = None,
    ):
        self.module_path = module_path
        self.module_type = module_type
        super().__init__(message)


class CutPointError(FusionSearchError, KeyError):
    """A cut point or boundary name that the backbone graph does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return str(self.args[0])


class PlanError(FusionSearchError, ValueError):
    """A stitch plan that cannot be built on the given backbones."""


class DoesNotFitError(PlanError):
    """A plan whose predicted peak training memory is more than the device has (``train.memory``):
    the plan's own failure, not retried, unless ``by_free_memory`` (the limit was a GPU's free
    memory, which other workers on that GPU share) and the device is shared."""

    def __init__(self, message: str, by_free_memory: bool = False) -> None:
        super().__init__(message)
        self.by_free_memory = by_free_memory


class DataError(FusionSearchError, ValueError):
    """A data file that exists but holds the wrong thing (shape, struct, values); the message names it."""


class MissingDataError(FusionSearchError, FileNotFoundError):
    """A data file or folder that should exist and does not; the message names the path."""


class NothingToDraw(FusionSearchError, ValueError):
    """A figure whose data is not there yet (too few complete trials, no confirmation): the
    message says what is missing, in words, and the report prints it in the figure's place."""


class ArgumentError(FusionSearchError, ValueError):
    """A command-line or API argument outside its range (size, steps, tasks, devices, ...)."""


class StorageError(FusionSearchError):
    """A study storage that cannot be opened, is not a database, or does not exist for a read."""


class CheckpointError(FusionSearchError, ValueError):
    """A weights or training-state file that is truncated, corrupt, or refused by ``weights_only``."""


class UntrustedFileError(PlanError):
    """A saved network that asks timm for more than a plain model name and safe arguments
    (pretrained weights, a hub name, a path): refused unless the caller trusts the file."""


class DependencyError(FusionSearchError):
    """A trial that cannot be measured because the trial it depends on (the single-task
    reference, the warm start) failed for good."""


class LostDependencyError(DependencyError):
    """A trial's dependency whose saved artefact (the warm start's nets) stays missing or
    unreadable even after it was trained again: the artefact store loses what it is given. The
    worker stops with one line and the waiting trial is queued again, so running the same
    command once the store is fixed completes every slot."""


__all__ += ["LostDependencyError"]


class DeviceError(FusionSearchError, RuntimeError):
    """A CUDA error that broke this process's CUDA context (a device-side assert, an illegal
    address): the worker stops, its trial is queued again, and a fresh process resumes."""


class PluginError(FusionSearchError):
    """A plugin (a module or ``.py`` file that registers data sets, tasks, units, weightings) that
    cannot be loaded: missing, failing on import, or named like a module it would shadow. One line
    naming the plugin and the cause, so a worker refuses before it takes a trial."""


__all__ += ["PluginError"]


class JobError(PluginError):
    """A trial of a kind of job (``search.jobs.register_job``) that no loaded module registers:
    the plugin that registers it is not loaded here."""


__all__ += ["JobError"]


class DiskError(FusionSearchError):
    """A file the study writes (a network, a checkpoint, an artefact, the database) that the disk
    refused: no space, over a quota or a size limit, read-only or failing. No verdict on the plan:
    its trial is queued again and the worker stops, since every later trial would fail the same
    way; the same command resumes once there is space."""


__all__ += ["DiskError"]
