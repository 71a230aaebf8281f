"""Per-layer int8 sensitivity (`edgevl.compress.torch_sensitivity`) on a small torch module whose
layers differ in how much int8 harms them."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgevl.compress.torch_sensitivity import (  # noqa: E402
    fake_int8_activation, fake_int8_weight, measure_sensitivity, rank_by_sensitivity,
)


class Two(torch.nn.Module):
    """`gentle` reads a well-spread input; `spiky` reads one with a few huge values (a per-tensor
    int8 scale set by them rounds every other value to a handful of levels; the spiking channel's
    weights are zero, so the spike sets the scale and nothing else)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gentle = torch.nn.Linear(16, 16)
        self.spiky = torch.nn.Linear(16, 16)
        self.norm = torch.nn.LayerNorm(16)
        with torch.no_grad():
            self.spiky.weight[:, 0] = 0.0

    def forward(self, x):
        spikes = torch.zeros_like(x)
        spikes[:, 0] = 200.0
        return torch.cat([self.gentle(x), self.spiky(x + spikes)], dim=-1)


def _feeds(seed: int, n: int) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)}


def test_the_layer_whose_input_int8_cannot_hold_ranks_first_and_the_module_is_restored():
    module = Two().eval()
    calib = [_feeds(i, 4) for i in range(4)]
    gate = _feeds(9, 24)
    with torch.no_grad():
        before = module(torch.from_numpy(gate["x"])).numpy()
    found = measure_sensitivity(module, ["gentle", "spiky", "norm", "missing"], calib, gate, before)
    assert [s.layer for s in found] == ["gentle", "spiky"]  # LayerNorm and unknown paths: not hookable
    by = {s.layer: s for s in found}
    assert by["spiky"].cosine_min < 0.999 < by["gentle"].cosine_min
    assert rank_by_sensitivity(["norm", "gentle", "spiky"], found) == ["spiky", "gentle", "norm"]
    with torch.no_grad():  # weights and hooks restored
        np.testing.assert_array_equal(module(torch.from_numpy(gate["x"])).numpy(), before)


def test_fake_int8_matches_the_quantizers_grids():
    w = torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0]])
    q = fake_int8_weight(w)
    assert torch.allclose(q[0] / (1.0 / 127), torch.round(q[0] / (1.0 / 127)), atol=1e-4) and torch.all(q[1] == 0)
    x = torch.linspace(-3, 5, 101)
    a = fake_int8_activation(x, -2.0, 4.0)
    assert float(a.min()) == pytest.approx(-2.0, abs=1e-6) and float(a.max()) == pytest.approx(4.0, abs=0.03)
    assert len(torch.unique(a)) <= 256
