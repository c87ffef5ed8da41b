"""The GPU path's logic, checked on the CPU (issue 20): mixed precision and its dtype choice, the
GradScaler's invariance for gradient-level weighting, fp32 evaluation, channels_last. CI has no
GPU; these are what a GPU run relies on that a CPU can show."""

from __future__ import annotations

import pytest
import torch

import fusionsearch as fs
from fusionsearch.errors import PlanError
from fusionsearch.tasks.task import get_task
from fusionsearch.tasks.weighting import GRADIENT_LEVEL, WEIGHTINGS, make_weighting
from fusionsearch.train import loading, precision
from fusionsearch.train import trainer as training
from fusionsearch.train.config import TrainConfig
from fusionsearch.train.precision import amp_dtype
from fusionsearch.train.trainer import evaluate, fit

GRADIENT_METHODS = sorted(n for n, c in WEIGHTINGS.items() if c.level == GRADIENT_LEVEL)


def _net(unit: str = "nddr", backbone: str = "test_resnet", at: list[str] | None = None):
    torch.manual_seed(0)
    plan = fs.StitchPlan(at=at or ["layer1"], unit=unit)
    net = fs.build(backbone, {"seg": 3, "normal": 3}, plan, input_size=(3, 32, 32))
    return net, {"seg": get_task("seg", out_channels=3), "normal": get_task("normal")}


def _data(n: int = 4) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        {
            "image": torch.randn(3, 32, 32, generator=gen),
            "seg": torch.randint(0, 3, (32, 32), generator=gen),
            "normal": torch.nn.functional.normalize(torch.randn(3, 32, 32, generator=gen), dim=0),
        }
        for _ in range(n)
    ]


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(
        **{"steps": 3, "batch_size": 2, "base_lr": 0.01, "optimizer": "adamw", "eval_every": 3, "progress": False, **kw}
    )


def _available(name: str) -> None:
    try:
        make_weighting(name, ["seg", "normal"])
    except PlanError as e:  # an optional solver this machine lacks: named in the error
        assert "fusionsearch[cvx]" in str(e), e
        pytest.skip(str(e))


# ---- the precision ------------------------------------------------------------------------------


@pytest.mark.parametrize(("capability", "dtype"), [((7, 5), torch.float16), ((8, 0), torch.bfloat16)])
def test_the_autocast_type_follows_the_workers_own_gpu(monkeypatch, capability, dtype):
    """sm75 (T4) and sm70 (V100) have no bf16 units: ``torch.cuda.is_bf16_supported()`` still says
    True in torch 2.14 (emulation), so it was bf16 there, slower than fp32, and never a GradScaler.
    The capability is asked of the worker's device, not of GPU 0."""
    asked = []

    def capability_of(device=None):
        asked.append(device)
        return capability

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability_of)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype(torch.device("cuda:1")) == dtype
    assert asked == [torch.device("cuda:1")]
    made = []
    monkeypatch.setattr(precision.torch.amp, "GradScaler", lambda device, enabled: made.append(enabled))
    precision.grad_scaler(torch.device("cuda:1"), use_amp=True)
    precision.grad_scaler(torch.device("cuda:1"), use_amp=False)
    assert made == [dtype == torch.float16, False]
    assert amp_dtype(torch.device("cpu")) == torch.bfloat16


@pytest.mark.parametrize("unit", ["nddr", "cross_stitch", "sluice"])
def test_cpu_autocast_trains_every_unit(unit):
    net, tasks = _net(unit, at=["layer1", "layer2"])
    history = fit(net, tasks, _data(), _data(2), _cfg(amp=True), device="cpu")
    assert len(history["losses"]) == 3 and all(torch.isfinite(torch.tensor(history["losses"])))


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_cpu_autocast_trains_with_every_weighting(name):
    _available(name)
    net, tasks = _net()
    weighting = {"name": name, "args": {"period": 1} if name == "dwa" else {}}
    history = fit(net, tasks, _data(), _data(2), _cfg(amp=True, weighting=weighting), device="cpu")
    assert all(torch.isfinite(torch.tensor(history["losses"]))), (name, history["losses"])


def test_evaluation_scores_fp32_predictions_even_when_training_ran_under_amp():
    """Autocast rounded the normal and depth predictions to bf16 before they were scored."""
    net, tasks = _net()
    val = _data(2)
    history = fit(net, tasks, _data(), val, _cfg(amp=True), device="cpu")
    assert history["evals"][-1]["metrics"] == evaluate(net, tasks, val, 2, "cpu")
    rounded = evaluate(net, tasks, val, 2, "cpu", amp=True)
    assert rounded["normal"]["mean"] != history["evals"][-1]["metrics"]["normal"]["mean"]


# ---- the GradScaler and gradient-level weighting ---------------------------------------------------


def _grads(name: str, scales: list[float]) -> list[torch.Tensor]:
    """The parameters' gradients after one ``backward`` per scale, each unscaled as the
    GradScaler's ``unscale_`` does; the method keeps its state (DB-MTL's running average)."""
    net, tasks = _net()
    weighting = make_weighting(name, ["seg", "normal"])
    batch = _data(2)
    x = torch.stack([b["image"] for b in batch])
    targets = {t: torch.stack([b[t] for b in batch]) for t in tasks}
    out = []
    for step, s in enumerate(scales):
        net.zero_grad(set_to_none=True)
        preds, extra = net(x, return_extra=True)
        losses = {t: tasks[t].loss(preds[t], targets[t]) for t in tasks}
        weighting.backward(losses, extra, net, step, lambda v, s=s: v * s)
        out.append(torch.cat([p.grad.flatten() / s for p in net.parameters() if p.grad is not None]))
    return out


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_gradient_level_methods_do_not_depend_on_the_loss_scale(name):
    """Under fp16 the per-task gradients are the GradScaler's scale S times the true ones. Nash-MTL
    clipped the aggregate to norm 1 in scaled space, and DB-MTL's running average mixed steps of
    different S: unscaled, the update must be the one of S = 1, whatever S does between steps."""
    _available(name)
    plain = _grads(name, [1.0, 1.0])
    scaled = _grads(name, [65536.0, 1024.0])
    for a, b in zip(plain, scaled):
        torch.testing.assert_close(b, a, rtol=2e-3, atol=1e-6)


# ---- memory layout ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("backbone", "at"), [("test_resnet", ["layer1"]), ("test_vit", None)])
def test_channels_last_trains_the_same_net(backbone, at):
    """``channels_last`` (on by default for CUDA) changes the memory layout, not the function: on
    conv and token models alike the predictions and the first training loss match the default
    layout's (later steps drift apart at rounding level, which AdamW's first steps magnify)."""
    if at is None:
        at = [fs.trace(backbone, (3, 32, 32)).boundaries[0].name]
    runs, preds = [], []
    x = torch.stack([b["image"] for b in _data(2)])
    for layout in (False, True):
        net, tasks = _net(backbone=backbone, at=at)
        net.eval()
        with torch.no_grad():
            if layout:
                net.to(memory_format=torch.channels_last)
            preds.append(net(x.contiguous(memory_format=torch.channels_last) if layout else x))
        runs.append(fit(net, tasks, _data(), _data(2), _cfg(steps=1, channels_last=layout), device="cpu")["losses"])
    for t in preds[0]:
        torch.testing.assert_close(preds[1][t], preds[0][t], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(runs[1]), torch.tensor(runs[0]), rtol=1e-5, atol=1e-6)


# ---- failures on a GPU -----------------------------------------------------------------------------


def _study(tmp_path, trials: int = 1):
    """A tiny study whose sampled plans all fuse at layer1 (the baselines never fuse)."""
    from helpers import tiny_recipe

    from fusionsearch.search import StudySettings, prepare_study

    url = f"sqlite:///{tmp_path}/g.db"
    settings = StudySettings(study="g", storage=url, trials=trials, baselines=["single"], pruner="none")
    recipe = tiny_recipe(fixed={"shared_prefix": "none", "unit@layer1": "nddr"})
    return prepare_study(recipe, settings), url


def _trials(url):
    import optuna

    return optuna.load_study(study_name="g", storage=url).get_trials()


def test_memory_is_freed_after_the_traceback_has_let_go_of_the_net(tmp_path, monkeypatch):
    """``_free_memory`` ran inside the ``except`` block, where the traceback still held the
    trial's frames and so its net: after an out-of-memory error nothing was freed."""
    import weakref

    from fusionsearch.experiment import experiment as experiment
    from fusionsearch.search import run_worker
    from fusionsearch.search import worker as worker

    _, url = _study(tmp_path)
    nets: list = []
    build, real_fit = experiment.Experiment.build, experiment.fit

    def kept(self, plan, *a, **k):
        net = build(self, plan, *a, **k)
        if plan.at:
            nets.append(weakref.ref(net))
        return net

    def fit(net, *a, **k):
        if net.plan.at:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_fit(net, *a, **k)

    alive_at_free: list[bool] = []
    real_free = worker._free_memory

    def free() -> None:
        real_free()
        alive_at_free.append(any(r() is not None for r in nets))

    monkeypatch.setattr(experiment.Experiment, "build", kept)
    monkeypatch.setattr(experiment, "fit", fit)
    monkeypatch.setattr(worker, "_free_memory", free)
    run_worker("g", url, device="cpu")
    failed = [t for t in _trials(url) if t.state.name == "FAIL"]
    assert [t.user_attrs["fail_kind"] for t in failed] == ["plan"]  # alone on its device: the plan's
    assert nets and alive_at_free and not any(alive_at_free), alive_at_free


def test_a_sticky_cuda_error_stops_the_worker_and_queues_the_trial_again(tmp_path, monkeypatch):
    """A device-side assert or an illegal address corrupts the process's CUDA context: filed as
    the plan's, it made every later trial of that worker fail too. It is an accident now: the
    trial is queued again and the worker stops with one line."""
    from fusionsearch.errors import DeviceError
    from fusionsearch.search import run_worker
    from fusionsearch.search.recovery import DEVICE, INFRASTRUCTURE, PLAN, failure_kind

    sticky = torch.AcceleratorError if hasattr(torch, "AcceleratorError") else RuntimeError
    assert failure_kind(RuntimeError("CUDA error: device-side assert triggered")) == DEVICE
    assert failure_kind(RuntimeError("CUDA error: an illegal memory access was encountered")) == DEVICE
    assert failure_kind(RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasSgemm")) == DEVICE
    assert failure_kind(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) == PLAN
    oom = torch.OutOfMemoryError("CUDA out of memory")
    assert failure_kind(oom) == PLAN and failure_kind(oom, shared_device=True) == INFRASTRUCTURE

    _, url = _study(tmp_path, trials=2)
    from fusionsearch.experiment import experiment as experiment

    original = experiment.Experiment.train

    def train(self, plan, *a, **k):
        if plan.at:
            raise sticky("CUDA error: an illegal memory access was encountered")
        return original(self, plan, *a, **k)

    monkeypatch.setattr(experiment.Experiment, "train", train)
    with pytest.raises(DeviceError, match="the CUDA context of cpu is broken"):
        run_worker("g", url, device="cpu")
    states = [(t.state.name, t.user_attrs.get("fail_kind")) for t in _trials(url) if "slot" in t.user_attrs]
    assert ("FAIL", DEVICE) in states and ("WAITING", None) in states  # its copy is queued, slot 2 untouched
    assert sum(s == ("FAIL", DEVICE) for s in states) == 1  # the worker stopped at the first


def test_each_worker_makes_its_own_gpu_current(monkeypatch):
    """``device=auto`` meant GPU 0 for every ``fusionsearch worker`` left at the default, and
    nothing set the current device, so the latency timer's synchronise and ``empty_cache`` acted
    on GPU 0 for all of them."""
    from fusionsearch.train import devices as devices

    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: current.append(i))
    assert [devices.use_device("auto", w) for w in range(6)] == [
        "cuda:0",
        "cuda:1",
        "cuda:2",
        "cuda:3",
        "cuda:0",
        "cuda:1",
    ]
    assert devices.use_device("cuda:3", 0) == "cuda:3"
    assert current == [0, 1, 2, 3, 0, 1, 3]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.use_device("auto", 5) == "cpu" and len(current) == 7


# ---- determinism -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["half_pixel", "align_corners", "tf_legacy"])
@pytest.mark.parametrize(
    ("shape", "size"), [((2, 3, 5, 7), (11, 13)), ((2, 3, 16, 16), (4, 6)), ((1, 2, 8, 8), (1, 1))]
)
def test_the_deterministic_resize_is_the_same_function(mode, shape, size):
    """Under deterministic algorithms, bilinear resizing runs as two matrix products (CUDA's
    interpolate backward accumulates with atomics, in a different order each run): the same
    values and the same gradients as the usual kernels, for all three sampling conventions."""
    from fusionsearch.tasks.resize import resize_bilinear

    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(shape[0], shape[1], *size, dtype=torch.float64)
    out = []
    for deterministic in (False, True):
        torch.use_deterministic_algorithms(deterministic)
        try:
            y = resize_bilinear(x, size, mode)
            (g,) = torch.autograd.grad((y * weights).sum(), x)
        finally:
            torch.use_deterministic_algorithms(False)
        out.append((y.detach(), g))
    torch.testing.assert_close(out[1][0], out[0][0])
    torch.testing.assert_close(out[1][1], out[0][1])


def test_the_deterministic_switch_holds_for_the_run_and_no_longer():
    net, tasks = _net()
    seen = []

    def callback(step, metrics):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark))

    runs = []
    for _ in range(2):
        net, tasks = _net()
        runs.append(fit(net, tasks, _data(), _data(2), _cfg(deterministic=True), device="cpu", callback=callback))
    assert seen == [(True, False), (True, False)]
    assert not torch.are_deterministic_algorithms_enabled()  # the process's setting is back
    import os

    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert runs[0]["losses"] == runs[1]["losses"]


def test_run_deterministic_is_part_of_the_studys_recipe(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from fusionsearch import cli

    stored = {}

    def prepare(recipe, settings, experiment=None):
        stored["train"] = recipe.train
        raise KeyboardInterrupt

    monkeypatch.setattr("fusionsearch.search.runner.prepare_study", prepare)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.app, ["run", "--backbone", "test_resnet", "--size", "32", "--deterministic"])
    assert result.exit_code == 130 and stored["train"]["deterministic"] is True


def test_a_training_step_reads_nothing_back_before_the_backward_pass(monkeypatch):
    """On a GPU each host read of a tensor (``.item()``, ``bool()``, ``.tolist()``) waits for the
    device. The step read each task's label mask, the NaN check and every loss before the
    backward pass; now the masks are read on the host before the copy, and the losses once, after
    the optimiser step."""
    from fusionsearch.train import trainer as t
    from fusionsearch.train.partial import loss_scales

    events: list[str] = []
    for name in ("item", "tolist", "__bool__"):
        real = getattr(torch.Tensor, name)

        def reader(self, *a, _real=real, _name=name, **k):
            events.append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, reader)
    net, tasks = _net()
    batch = {k: torch.stack([b[k] for b in _data(2)]) for k in ("image", "seg", "normal")}
    cfg = _cfg()
    masks = {n: tasks[n].labelled(batch[n]) for n in net.tasks}  # what fit reads before the copy
    present = loss_scales(masks, cfg.partial_loss, cfg.batch_size)
    weighting = make_weighting("fixed", list(net.tasks))
    real_backward = weighting.backward

    def backward(*a, **k):
        events.append("backward")
        return real_backward(*a, **k)

    monkeypatch.setattr(weighting, "backward", backward)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    events.clear()
    scaler = precision.grad_scaler(torch.device("cpu"), False)
    t._step(net, tasks, batch, batch["image"], cfg, torch.device("cpu"), False, opt, scaler, weighting, 0, present)
    assert events and events[0] == "backward", events
    assert events.count("tolist") + events.count("item") + events.count("__bool__") <= 3, events


# ---- the data loader ----------------------------------------------------------------------------


def _nyu(tmp_path, train: int = 6):
    from test_datasets import write_mtan

    from fusionsearch.data.nyuv2 import NYUv2

    root = write_mtan(tmp_path / "nyu", {"train": train, "val": 2})
    data, val = NYUv2(root, "train", size=32, augment=True), NYUv2(root, "val", size=32)
    return data, val, {"seg": get_task("seg", out_channels=13), "normal": get_task("normal")}


def _nyu_net():
    torch.manual_seed(0)
    return fs.build("test_resnet", {"seg": 13, "normal": 3}, fs.StitchPlan(at=["layer1"]), input_size=(3, 32, 32))


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_spawned_loader_workers_train_as_the_main_process_does_and_resume_exactly(tmp_path):
    """NYUv2's training split flips at random. The flips came from torch's global generator in
    whichever process read the item: a loader worker's own (seeded by the loader), so they changed
    with the worker count and on resume. Each item is now drawn with the seed of its position in
    the run's stream (``train.item_seed``)."""
    data, val, tasks = _nyu(tmp_path)
    cfg = _cfg(steps=4, batch_size=2, eval_every=2, num_workers=0)
    main = _nyu_net()
    h_main = fit(main, tasks, data, val, cfg, device="cpu")
    # two spawned workers (each start imports the package: ~3 s here), cut at step 2, then resumed
    spawned = TrainConfig(**{**cfg.__dict__, "num_workers": 2, "loader_start": "spawn"})
    fit(_nyu_net(), tasks, data, None, spawned, device="cpu", checkpoint=tmp_path / "ck.pt", until=2)
    torch.manual_seed(5)  # a fresh process: another global generator, other initial weights
    resumed = fs.build("test_resnet", {"seg": 13, "normal": 3}, fs.StitchPlan(at=["layer1"]), input_size=(3, 32, 32))
    h_resumed = fit(resumed, tasks, data, val, spawned, device="cpu", checkpoint=tmp_path / "ck.pt")
    assert h_resumed["losses"] == h_main["losses"]
    assert h_resumed["evals"][-1] == h_main["evals"][-1]  # evaluated by spawned workers too
    _same(main, resumed)


def test_a_flip_is_a_function_of_the_items_position_in_the_stream(tmp_path):
    data, _, _ = _nyu(tmp_path)
    cfg = _cfg(steps=6, batch_size=2)
    cpu = torch.device("cpu")
    full = list(loading.train_loader(data, cfg, cpu))
    torch.manual_seed(99)  # the caller's generator does not reach the draws
    late = list(loading.train_loader(data, cfg, cpu, start=3))
    assert len(full) == 6 and len(late) == 3
    for a, b in zip(full[3:], late):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["normal"], b["normal"])
    # the flips happen (6 steps x 2 items: 12 draws of p = 0.5), each item as the plain one or its mirror
    data.augment = False
    plain = list(loading.train_loader(data, cfg, cpu))
    flipped = [not torch.equal(a["image"][i], p["image"][i]) for a, p in zip(full, plain) for i in range(2)]
    assert 0 < sum(flipped) < len(flipped)
    for a, p in zip(full, plain):
        for i in range(2):
            assert torch.equal(a["image"][i], p["image"][i]) or torch.equal(a["image"][i], p["image"][i].flip(-1))


def test_calibration_reads_the_batches_training_starts_with(tmp_path, monkeypatch):
    data, _, _ = _nyu(tmp_path)
    cfg = _cfg(steps=4, batch_size=2, bn_calibration_batches=2)
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(training, "calibrate_batchnorm", lambda net, ld, dev: seen.extend(b["image"] for b in ld))
    training.calibrate(_nyu_net(), data, cfg, torch.device("cpu"))
    first = [b["image"] for b in loading.train_loader(data, cfg, torch.device("cpu"))][:2]
    assert len(seen) == 2 and all(torch.equal(a, b) for a, b in zip(seen, first))


def test_fit_evaluates_with_one_loader_for_the_whole_run(tmp_path, monkeypatch):
    """``evaluate`` built a loader, and with workers started their processes, at every call."""
    data, val, tasks = _nyu(tmp_path)
    loaders: list[object] = []
    real = training.evaluate

    def spy(net, tasks, data, *a, **k):
        loaders.append(data)
        return real(net, tasks, data, *a, **k)

    monkeypatch.setattr(training, "evaluate", spy)
    fit(_nyu_net(), tasks, data, val, _cfg(steps=4, batch_size=2, eval_every=1), device="cpu")
    assert len(loaders) == 4 and isinstance(loaders[0], torch.utils.data.DataLoader)
    assert all(x is loaders[0] for x in loaders)


def test_auto_loader_workers(monkeypatch, tmp_path):
    from fusionsearch.experiment.experiment import _Cached

    data, val, _ = _nyu(tmp_path)
    gpu = torch.device("cuda:1")
    cfg = TrainConfig(progress=False)
    assert cfg.num_workers is None
    assert loading.loader_workers(data, cfg, torch.device("cpu")) == 0  # the cores train
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert loading.loader_workers(data, cfg, gpu) == 4
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # a worker of `run --workers` given 2 threads
    assert loading.loader_workers(data, cfg, gpu) == 1  # one core trains
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert loading.loader_workers(_Cached(val), cfg, gpu) == 0  # held in memory
    assert loading.loader_workers(_Cached(val, limit=1000), cfg, gpu) == 4  # too large to hold
    assert loading.loader_workers(data, TrainConfig(num_workers=3, progress=False), torch.device("cpu")) == 3
    with pytest.raises(fs.FusionSearchError, match="loader_start must be one of fork, spawn, forkserver, null"):
        TrainConfig(loader_start="spwan")
