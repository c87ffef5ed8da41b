from __future__ import annotations

import functools

import pytest
import torch

import fusionsearch as fs

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
def graph_of():
    return traced
