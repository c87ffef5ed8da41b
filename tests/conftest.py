from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import _initdb, tiny_recipe

import fusionsearch as fs
from fusionsearch.search import StudySettings, prepare_study, run_worker

torch.set_num_threads(1)  # tiny models: threads only add overhead (and oversubscribe)

# timm's tiny test models plus one small member of each family the issue names, at small sizes.
EXTRA_MODELS: dict[str, dict] = {
    "resnet18": {"input_size": (3, 64, 64)},
    "vgg11": {"input_size": (3, 64, 64)},
    "convnext_atto": {"input_size": (3, 64, 64)},
    "efficientnet_b0": {"input_size": (3, 64, 64)},
    "mobilenetv3_small_050": {"input_size": (3, 64, 64)},
    "vit_tiny_patch16_224": {"input_size": (3, 64, 64), "img_size": 64},
    "swin_tiny_patch4_window7_224": {"input_size": (3, 112, 112), "img_size": 112, "window_size": 7},
    "regnetx_002": {"input_size": (3, 64, 64)},
    "densenet121": {"input_size": (3, 64, 64)},
}


@functools.cache
def traced(name: str) -> fs.BackboneGraph:
    """Trace once per session: graphs are read-only in the tests that share them."""
    kwargs = dict(EXTRA_MODELS.get(name, {}))
    size = kwargs.pop("input_size", None)
    torch.manual_seed(0)
    return fs.trace(name, size, **kwargs)


@pytest.fixture
def default_sigint():
    """SIGINT as Python starts it in a terminal (``KeyboardInterrupt``) for a test that sends it to
    itself: a shell that started pytest in the background (``nohup``, ``&``) has it ignored, which
    ``interrupts_taken`` rightly leaves ignored."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.fixture
def graph_of():
    return traced


@pytest.fixture(scope="session")
def small_study(tmp_path_factory):
    """Baselines + 3 trials, with one out-of-memory and one NaN failure injected."""
    d = tmp_path_factory.mktemp("study")
    url = f"sqlite:///{d}/s.db"
    study = prepare_study(tiny_recipe(), StudySettings(study="s", storage=url, trials=4, keep_nets="all"))
    nan_trial = {}

    def inject(trial):
        if trial.user_attrs.get("slot") == 0:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        nan_trial["on"] = trial.user_attrs.get("slot") == 1

    original = fs.tasks.dense.Normals.loss

    def loss(self, pred, target):
        out = original(self, pred, target)
        return out * float("nan") if nan_trial.get("on") else out

    fs.tasks.dense.Normals.loss = loss
    try:
        ran = run_worker("s", url, device="cpu", before_trial=inject)
    finally:
        fs.tasks.dense.Normals.loss = original
    return study, url, ran


@pytest.fixture
def postgres(tmp_path):
    """A throw-away PostgreSQL server on 127.0.0.1 (CI installs Debian's postgresql)."""
    initdb = _initdb()
    if initdb is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs it")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    bindir = Path(initdb).parent
    # not under tmp_path: pytest's base folder is private to root, and the server runs as postgres
    data = Path(tempfile.mkdtemp(prefix="fusionsearch-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_user,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(data / "log"),
            "-o",
            f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
