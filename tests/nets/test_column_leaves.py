"""Tracer leaves per column: a leaf must name a module of the backbone it is given to, so columns
of different backbones (a ResNet and a ConvNeXt) need their own."""

from __future__ import annotations

import pytest
import torch

import fusionsearch as fs
from fusionsearch.errors import ArgumentError, PlanError

PAIR = ["test_resnet", "test_convnext"]
TASKS = {"seg": 3, "normal": 3}
PLAN = fs.StitchPlan(at=[["layer2", "stages.1"]])  # one fusion point, named in each column


def test_a_resnet_and_a_convnext_column_each_take_their_own_leaves(tmp_path):
    leaf = {"seg": ["BasicBlock"], "normal": ["ConvNeXtBlock"]}
    net = fs.build(PAIR, TASKS, PLAN, input_size=(3, 64, 64), leaf=leaf)
    kinds = [{type(m).__name__ for m in column.modules()} for column in net.columns]
    assert "BasicBlock" in kinds[0] and "ConvNeXtBlock" in kinds[1]  # kept whole, not traced into
    assert net.meta.leaf == leaf
    fs.save(net, tmp_path / "n.pt")
    again = fs.load(tmp_path / "n.pt")  # the saved net names each column's leaves again
    assert again.meta.leaf == leaf
    x = torch.randn(1, 3, 64, 64)
    net.eval(), again.eval()
    assert torch.equal(net(x)["seg"], again(x)["seg"])
    with pytest.raises(ArgumentError, match="neither a module class nor a module path of ConvNeXt"):
        fs.build(PAIR, TASKS, PLAN, input_size=(3, 64, 64), leaf=["BasicBlock"])  # one list: every column


def test_a_leaf_for_a_column_that_does_not_exist_names_the_columns():
    with pytest.raises(PlanError, match="leaf names column 'depth', but the columns are the tasks seg, normal"):
        fs.build("test_resnet", TASKS, fs.StitchPlan(at=["layer2"]), input_size=(3, 32, 32), leaf={"depth": ["x"]})
