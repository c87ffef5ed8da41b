"""The memory plan (``train.memory``): exact parameter, gradient and optimiser bytes, activations
that scale with the batch and with the number of columns, and the net left as it was."""

from __future__ import annotations

import pytest
import torch

from fusionsearch.errors import DoesNotFitError, FusionSearchError
from fusionsearch.nets import StitchPlan, build
from fusionsearch.train.config import TrainConfig, max_memory_bytes
from fusionsearch.train.memory import check_fits, plan_memory

SIZE = (3, 32, 32)


def _net(tasks: dict[str, int]):
    return build("test_resnet", tasks, StitchPlan(at=[]), input_size=SIZE)


def test_parameters_gradients_and_optimiser_state_are_exact() -> None:
    net = _net({"seg": 3, "normal": 3})
    n = sum(p.numel() * 4 for p in net.parameters())
    sgd, adamw = plan_memory(net, 2, SIZE, "sgd"), plan_memory(net, 2, SIZE, "adamw")
    assert sgd.parameters == sgd.gradients == n == adamw.parameters
    assert sgd.optimizer_state == n and adamw.optimizer_state == 2 * n
    assert plan_memory(net, 2, SIZE, "sgd", momentum=0.0).optimizer_state == 0
    assert sgd.total == sgd.parameters + sgd.gradients + sgd.optimizer_state + sgd.activations + sgd.largest
    assert all(p.device.type == "cpu" for p in net.parameters())  # a meta copy ran, not the net


def test_activations_grow_with_the_batch_and_the_columns() -> None:
    two = _net({"seg": 3, "normal": 3})
    one = _net({"seg": 3})
    b2, b8 = plan_memory(two, 2, SIZE), plan_memory(two, 8, SIZE)
    assert b8.activations == pytest.approx(4 * b2.activations, rel=0.05)  # per-channel BN statistics are not
    assert plan_memory(two, 2, SIZE).parts["columns"] == pytest.approx(
        2 * plan_memory(one, 2, SIZE).parts["columns"], rel=0.05
    )  # the input batch is one tensor both columns read
    assert set(b2.segments) >= {"columns[0][0]", "columns[0][1]"}
    columns = [n for k, n in b2.segments.items() if k.startswith(("shared", "columns"))]
    assert plan_memory(two, 2, SIZE, checkpointed=True).recompute == max(columns)


def test_a_checkpointed_step_keeps_the_segments_inputs_and_recomputes_one_segment() -> None:
    """``train.checkpoint: segments``: of the columns' saves only each segment's input is kept
    (the batch, read by both columns, once), the largest segment comes back in the backward pass;
    a limit between the two peaks refuses the plain step and lets the checkpointed one train."""
    net = build("test_resnet", {"seg": 3, "normal": 3}, StitchPlan(at=["layer1"], unit="nddr"), input_size=SIZE)
    plain, ck = plan_memory(net, 4, SIZE), plan_memory(net, 4, SIZE, checkpointed=True)
    assert ck.activations < plain.activations and ck.recompute > 0 and ck.total < plain.total
    assert sum(ck.parts.values()) == ck.activations and "columns" not in ck.parts
    assert ck.parts["units"] == plain.parts["units"]  # fusion units and heads are not recomputed
    assert ck.parts["segment inputs (checkpointed)"] >= 4 * 3 * 32 * 32 * 4  # at least the batch
    limit = (plain.total + ck.total) / 2 / (1 << 30)
    with pytest.raises(DoesNotFitError):
        check_fits(net, TrainConfig(batch_size=4, max_memory=limit), SIZE, "cpu")
    assert check_fits(net, TrainConfig(batch_size=4, max_memory=limit, checkpoint="segments"), SIZE, "cpu") is not None


def test_the_activations_are_what_a_real_step_saves() -> None:
    """On the CPU, the bytes autograd saves in a real forward pass are the ones the meta pass counts."""
    net = _net({"seg": 3, "normal": 3}).train()
    seen: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        preds = net(torch.randn(2, *SIZE))
        sum(p.square().mean() for p in preds.values())
    assert plan_memory(net, 2, SIZE).activations == sum(seen.values())


def test_max_memory_is_gib() -> None:
    assert max_memory_bytes(1.5) == 3 << 29
    with pytest.raises(FusionSearchError, match="max_memory"):
        max_memory_bytes(0)


def test_check_fits_only_where_a_limit_is_known() -> None:
    net = _net({"seg": 3, "normal": 3})
    assert check_fits(net, TrainConfig(batch_size=2), SIZE, "cpu") is None  # the default: no plan, no check
    plan = check_fits(net, TrainConfig(batch_size=2, max_memory=64.0), SIZE, "cpu")
    assert plan is not None and plan.total < 64 << 30
    with pytest.raises(DoesNotFitError, match=r"^does not fit: needs 0\.\d\d GiB, has 0\.00 GiB \(train.max_memory"):
        check_fits(net, TrainConfig(batch_size=2, max_memory=0.001), SIZE, "cpu")
    with pytest.raises(FusionSearchError, match="max_memory"):
        TrainConfig(max_memory=-1)


def test_a_gpus_limit_is_its_free_memory_and_what_this_process_holds_unused(monkeypatch) -> None:
    """On a GPU the limit is the driver's free memory plus the allocator's cached, unused bytes
    (a previous trial's cache is this process's to reuse), or ``train.max_memory`` if smaller."""
    from fusionsearch.train.memory import available

    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 5 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 * gib)
    cuda = torch.device("cuda", 0)
    assert available(cuda, None) == (6 * gib, "free on cuda:0")
    assert available(cuda, 3.0) == (3 * gib, "train.max_memory")
    assert available(torch.device("cpu"), None) is None
