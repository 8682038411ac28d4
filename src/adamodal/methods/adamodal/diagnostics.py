"""What a client reports about a model besides its update: validation scores and the stages'
diagnostics, as aggregates over its validation rows, never a row.

The scores rank clients (teachers, ``contribution=score``); the diagnostics (mean gate value,
imputation quality) go into the round's metrics, pooled by the server
(:func:`~adamodal.methods.adamodal.aggregate.pooled_diagnostics`).
"""

from __future__ import annotations

import torch
from torch import nn

from adamodal.kit.train import scores_from_logits, task_loss
from adamodal.methods.adamodal.imputation import imputation_quality
from adamodal.methods.adamodal.net import AdaModalNet
from adamodal.methods.base import ClientContext
from adamodal.metrics import compute_metrics

NO_SCORE = {"val_auc": float("nan"), "val_loss": float("nan")}


@torch.no_grad()
def client_diagnostics(model: AdaModalNet, ctx: ClientContext, device: torch.device) -> dict[str, float]:
    """The received global model on this client's validation rows, in one forward pass:
    macro-AUC and loss, the gate values and the imputation quality, for the round's metrics."""
    if len(ctx.val) == 0:
        return dict(NO_SCORE)
    model.eval()
    d = ctx.val.to(device)
    fwd = model.run(d.x_img, d.x_txt, d.m_img, d.m_txt, impute_all=True)
    out = _score(fwd.logits, ctx)
    if fwd.gates:
        rows = [g[fwd.rows[m]] for m, g in fwd.gates.items() if bool(fwd.rows[m].any())]
        if rows:
            gates = torch.cat(rows)
            out.update(gate_mean=float(gates.mean()), gate_rows=float(len(gates)))
    paired = fwd.rows["image"] & fwd.rows["text"]
    out.update(imputation_quality(fwd.reps, fwd.imputed, paired, torch.Generator().manual_seed(ctx.seed)))
    return out


@torch.no_grad()
def val_scores(model: nn.Module, ctx: ClientContext, device: torch.device) -> dict[str, float]:
    """Validation macro-AUC and loss of the model the client predicts with."""
    if len(ctx.val) == 0:
        return dict(NO_SCORE)
    model.eval()
    v = ctx.val.to(device)
    return _score(model(v.x_img, v.x_txt, v.m_img, v.m_txt), ctx)


def _score(logits: torch.Tensor, ctx: ClientContext) -> dict[str, float]:
    loss = float(task_loss(logits, ctx.val.y.to(logits.device), ctx.spec.task))
    scores = scores_from_logits(logits, ctx.spec.task).float().cpu().numpy()
    auc = compute_metrics(scores, ctx.val.y.numpy(), ctx.spec.task)["macro_auc"]
    return {"val_auc": float(auc), "val_loss": loss, "val_rows": float(len(ctx.val))}
