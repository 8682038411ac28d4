"""Stage 4: the forget gate and the propagation loss."""

from __future__ import annotations

import torch
from torch import nn

from adamodal.methods.adamodal.gating import ForgetGate, propagation_loss


def test_forget_gate_output_lies_between_r_and_z():
    torch.manual_seed(0)
    gate = ForgetGate(16, tau=0.5)
    for layer in gate.linear:  # a gate far from its initial value
        nn.init.normal_(layer.weight, std=0.3)
    r, z = torch.randn(64, 16), torch.randn(64, 16)
    out, g = gate(r, z)
    lo, hi = torch.minimum(r, z), torch.maximum(r, z)
    assert torch.all(out >= lo - 1e-6) and torch.all(out <= hi + 1e-6)
    assert torch.all((g >= 0) & (g <= 1)) and g.std() > 0.1
    # the temperature sharpens the gate: at small tau, g is nearer to 0 or 1
    sharp = ForgetGate(16, tau=0.05)
    sharp.load_state_dict(gate.state_dict())
    assert (sharp.gate(r, z) - 0.5).abs().mean() > (g - 0.5).abs().mean()


def test_propagation_loss_counts_only_rows_with_the_modality():
    r = {"image": torch.zeros(4, 3)}
    z = {"image": torch.ones(4, 3)}
    rows = {"image": torch.tensor([True, True, False, False])}
    assert float(propagation_loss(r, z, rows, 0.5)) == 0.5
    r["image"][2:] = 1.0  # rows without the modality do not count
    assert float(propagation_loss(r, z, rows, 0.5)) == 0.5
    assert propagation_loss(r, z, rows, 0.0) is None
