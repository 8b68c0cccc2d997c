"""The shared trainer (edge.training): a student learns a teacher's outputs, the held-out loss picks
the checkpoint, and the loss judges each output by its task. QAT runs on it (tests/test_qat.py);
these check it on plain float networks, as the fine-tuning and distillation stages will use it."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from edge import training
from edge.errors import ConversionError


def _data(n=64, seed=0, labelled=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 4, n) if labelled else None
    return training.TrainSet({"x": x}, labels, "random", image="x")


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def test_the_student_moves_towards_the_teacher_and_the_best_checkpoint_is_kept():
    teacher, student = _net(0), _net(1)
    frozen = copy.deepcopy(teacher.state_dict())
    train, val = training.split(_data(80), 0.2, np.random.default_rng(0))
    assert len(train) == 64 and len(val) == 16
    r = training.distill(student, teacher, train, val, steps=40, check_every=8, lr=0.05, batch_size=16,
                         rng=np.random.default_rng(0))
    assert len(r.losses) == 40 and sorted(map(int, r.checks)) == [0, 8, 16, 24, 32, 40]
    assert r.checks[str(r.best[0])] == min(r.checks.values()) < r.checks["0"] / 2
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in frozen.items()), "the teacher was modified"
    assert not student.training  # measuring restores the mode it found


def test_the_same_seed_trains_the_same_weights():
    def run():
        s = _net(1)
        training.distill(s, _net(0), _data(), None, steps=6, check_every=3, lr=0.05, batch_size=16,
                         rng=np.random.default_rng(7))
        return s.state_dict()
    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_loss_judges_each_output_by_its_task():
    logits, dense = torch.randn(4, 10), torch.randn(4, 2, 5, 5)
    assert training.loss((logits, dense), (logits, dense), None, ("classification", "segmentation")) == 0
    assert training.loss(dense * 1.1, dense, None, ("segmentation",)).item() == pytest.approx(0.01, rel=1e-4)
    labels = logits.argmax(1)
    assert training.loss(logits, logits, labels) == pytest.approx(
        float(nn.functional.cross_entropy(logits, labels)), rel=1e-6)


def test_a_diverging_run_stops_with_the_step_and_a_hint():
    """lr=inf: the first step makes the weights inf, the second loss is NaN."""
    with pytest.raises(ConversionError, match=r"diverged at step 2 of 4 .*lower --lr \(it was inf\)"):
        training.distill(_net(1), _net(0), _data(), None, steps=4, check_every=4, lr=float("inf"),
                         batch_size=16, rng=np.random.default_rng(0))
