"""Stage 1: teacher selection, soft targets and the distillation loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adamodal.methods.adamodal.distill import (
    comparable_scores,
    kd_loss,
    select_teachers,
    soft_targets,
    teachers_for,
)


@torch.no_grad()
def _kl(student_logits, teacher_logits, t=1.0):
    p = torch.softmax(teacher_logits / t, -1)
    return float((p * (p.log() - F.log_softmax(student_logits / t, -1))).sum(-1).mean())


def test_quantile_cut_picks_the_teachers():
    scores = {0: 0.9, 1: 0.5, 2: 0.7, 3: 0.6, 4: 0.8}
    assert select_teachers(scores, 0.5) == [0, 2, 4]  # at or above the median 0.7
    assert select_teachers(scores, 0.75) == [0, 4]  # the 0.75 quantile is 0.8
    assert select_teachers(scores, 0.25) == [0, 2, 3, 4]  # the 0.25 quantile is 0.6
    assert select_teachers({}, 0.5) == []


def test_full_modality_teachers_first_then_score_and_the_cap():
    mods = {0: ("image", "text"), 1: ("image",), 2: ("text",), 3: ("image", "text"), 4: ("image",)}
    scores = {0: 0.7, 1: 0.99, 2: 0.95, 3: 0.8, 4: 0.9}
    teachers = [0, 1, 2, 3, 4]
    # a multimodal student: the teachers that see both modalities first, best first
    assert teachers_for(("image", "text"), teachers, mods, scores, 3) == [3, 0, 1]
    # an image-only student: every teacher that sees images is complete for it; text-only ones never
    assert teachers_for(("image",), teachers, mods, scores, 10) == [1, 4, 3, 0]
    assert teachers_for(("text",), teachers, mods, scores, 2) == [2, 3]
    assert teachers_for(("image",), teachers, mods, scores, 1) == [1]


def test_kd_lowers_the_students_kl_to_the_teacher():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    teacher, student = nn.Linear(8, 5), nn.Linear(8, 5)
    with torch.no_grad():
        t_logits = teacher(x) * 3
    before = _kl(student(x), t_logits)
    opt = torch.optim.Adam(student.parameters(), lr=0.05)
    target = soft_targets([t_logits], 2.0, "multiclass")
    for _ in range(100):
        loss = kd_loss(student(x), target, 2.0, "multiclass")
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert _kl(student(x), t_logits) < 0.3 * before


def test_kd_loss_is_zero_only_at_the_teacher():
    torch.manual_seed(1)
    logits = torch.randn(6, 4)
    for task in ("multiclass", "multilabel"):
        same = kd_loss(logits, soft_targets([logits], 3.0, task), 3.0, task)
        other = kd_loss(torch.randn(6, 4), soft_targets([logits], 3.0, task), 3.0, task)
        assert float(same) == pytest.approx(0.0, abs=1e-5)
        assert float(other) > 1e-3


def test_soft_targets_average_teacher_probabilities():
    avg = soft_targets([torch.tensor([[10.0, 0.0]]), torch.tensor([[0.0, 10.0]])], 1.0, "multiclass")
    assert torch.allclose(avg, torch.tensor([[0.5, 0.5]]), atol=1e-4)


def test_scores_stay_on_one_scale():
    s = comparable_scores({0: {"val_auc": 0.9, "val_loss": 0.3}, 1: {"val_auc": 0.7, "val_loss": 0.9}})
    assert s == {0: 0.9, 1: 0.7}
    s = comparable_scores({0: {"val_auc": float("nan"), "val_loss": 0.3}, 1: {"val_auc": 0.7, "val_loss": 0.9}})
    assert s[0] > s[1] and s[0] == pytest.approx(-0.3)
