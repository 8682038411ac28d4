"""Multi-label training: unknown (NaN) targets add neither loss nor gradient."""

from __future__ import annotations

import torch

from adamodal.kit.train import task_loss


def test_nan_targets_are_masked() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 3, requires_grad=True)
    y = (torch.rand(6, 3) < 0.5).float()
    y_nan = y.clone()
    y_nan[0, 1] = y_nan[4, 2] = float("nan")
    loss = task_loss(logits, y_nan, "multilabel")
    assert torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None
    assert logits.grad[0, 1] == 0 and logits.grad[4, 2] == 0 and logits.grad[1].abs().sum() > 0
    # the mean over the known entries equals BCE over just those
    known = ~torch.isnan(y_nan)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[known], y[known])
    assert torch.isclose(task_loss(logits, y_nan, "multilabel"), expected)
    # without unknowns, the plain BCE
    assert torch.isclose(task_loss(logits, y, "multilabel"),
                         torch.nn.functional.binary_cross_entropy_with_logits(logits, y))
