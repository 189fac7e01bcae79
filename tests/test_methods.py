"""The compared methods: each trains on a fixed real batch, and FixMatch's mask and MPL's
teacher update do what their papers define."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from s5cl.config.params import validate
from s5cl.model.network import S5CLNet
from s5cl.pipeline.stages import STAGES
from s5cl.training.loop import seed_everything
from s5cl.training.methods import (
    ContrastiveObjective,
    FixMatchObjective,
    MPLObjective,
    UnlabeledTargets,
    fixmatch_loss,
    make_objective,
    mpl_teacher_loss,
)

from .conftest import digit_views

PHASES = {s.name: s.phase for s in STAGES if s.phase}


@pytest.mark.parametrize("method", ["ce", "supcon", "s5cl", "fixmatch", "mpl"])
def test_a_few_steps_lower_each_methods_loss_on_a_fixed_batch(method):
    seed_everything(0)
    x, y_l = digit_views()
    params = validate({"method": method, "fixmatch": {"threshold": 0.0}})
    targets = UnlabeledTargets("instance", 0.7, 1.0, 0.7, 1.0)
    objective = make_objective(PHASES["s5cl"], S5CLNet(num_classes=10).train(), params, 10, targets)
    if not objective.uses_unlabeled:
        x = x[: 2 * len(y_l)]
    positions = np.arange(16)
    losses = [objective.update(x, y_l, positions, step)[0]["loss"] for step in range(6)]
    assert losses[-1] < losses[0], losses


def test_each_method_and_phase_gets_the_objective_of_the_table():
    model = S5CLNet(num_classes=3)
    targets = UnlabeledTargets("instance", 0.7, 1.0, 0.7, 1.0)
    for method, phase, kind, w_l, unlabeled in [
        ("ce", "s5cl", ContrastiveObjective, 0.0, False),
        ("supcon", "retrain", ContrastiveObjective, 1.0, False),
        ("s5cl", "warmup", ContrastiveObjective, 1.0, False),
        ("s5cl", "s5cl", ContrastiveObjective, 1.0, True),
        ("fixmatch", "warmup", ContrastiveObjective, 0.0, False),
        ("fixmatch", "s5cl", FixMatchObjective, None, True),
        ("mpl", "retrain", MPLObjective, None, True),
    ]:
        params = validate({"method": method})
        objective = make_objective(PHASES[phase], model, params, 3, targets)
        assert isinstance(objective, kind), (method, phase)
        assert objective.uses_unlabeled == unlabeled, (method, phase)
        if w_l is not None:
            assert objective.w_l == w_l, (method, phase)


def test_fixmatch_counts_only_confident_weak_views_and_never_backpropagates_into_them():
    logits_l = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    y_l = torch.tensor([0, 1])
    weak = torch.tensor([[8.0, 0.0], [0.2, 0.0], [0.0, 9.0]], requires_grad=True)  # 2 confident
    strong = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0]], requires_grad=True)
    loss, parts = fixmatch_loss(logits_l, y_l, weak, strong, threshold=0.95, weight=2.0)

    expected_u = (F.cross_entropy(strong[0:1], torch.tensor([0])) + F.cross_entropy(
        strong[2:3], torch.tensor([1]))) / 3  # fmt: skip  # mean over all 3 unlabeled images
    assert parts["loss_u"] == pytest.approx(expected_u.item(), rel=1e-6)
    assert parts["mask_rate"] == pytest.approx(2 / 3)
    assert loss.item() == pytest.approx(
        F.cross_entropy(logits_l, y_l).item() + 2.0 * expected_u.item(), rel=1e-6
    )
    loss.backward()
    assert weak.grad is None  # targets only
    assert torch.equal(strong.grad[1], torch.zeros(2))  # unconfident: no pull
    assert strong.grad[0].abs().sum() > 0 and strong.grad[2].abs().sum() > 0

    with pytest.raises(ValueError, match="same shape"):
        fixmatch_loss(logits_l, y_l, weak[:2], strong, 0.9, 1.0)


def _teacher_confidence_after_one_step(h: float) -> tuple[float, float]:
    """Probability the teacher gives its own pseudo-labels, before and after one SGD step."""
    torch.manual_seed(0)
    teacher = torch.nn.Linear(5, 3)
    x_l, y_l = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
    x_u = torch.randn(6, 5)
    pseudo = teacher(x_u).argmax(1).detach()

    def confidence() -> float:
        with torch.no_grad():
            return teacher(x_u).softmax(1).gather(1, pseudo[:, None]).mean().item()

    before = confidence()
    optimizer = torch.optim.SGD(teacher.parameters(), lr=0.5)
    loss = mpl_teacher_loss(teacher(x_l) * 0, y_l, teacher(x_u), pseudo, h)  # isolate the h term
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return before, confidence()


def test_mpl_teacher_reinforces_labels_that_helped_the_student_and_weakens_the_others():
    before, after_helped = _teacher_confidence_after_one_step(h=+1.0)
    _, after_hurt = _teacher_confidence_after_one_step(h=-1.0)
    _, after_neutral = _teacher_confidence_after_one_step(h=0.0)
    assert after_helped > before > after_hurt
    assert after_neutral == pytest.approx(before)


def test_mpl_step_updates_student_and_teacher_from_the_students_feedback():
    seed_everything(0)
    x, y_l = digit_views()
    student = S5CLNet(num_classes=10).train()
    teacher = S5CLNet(num_classes=10).train()
    objective = MPLObjective(student, teacher, validate({}).s5cl)
    t_before = [p.detach().clone() for p in teacher.parameters()]
    s_before = [p.detach().clone() for p in student.parameters()]
    parts, _ = objective.update(x, y_l, np.arange(16), 0)
    assert set(parts) >= {"loss", "loss_teacher", "h", "teacher_acc"}
    assert np.isfinite(parts["h"])
    assert any(not torch.equal(a, b) for a, b in zip(t_before, teacher.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(s_before, student.parameters(), strict=True))
    state = objective.state_dict()
    assert set(state) == {"optimizer", "teacher", "teacher_optimizer"}
    assert set(objective.carried_state()) == {"teacher"}, "model files carry no optimizer state"


def test_retrieval_metrics_agree_with_pytorch_metric_learning():
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN
    from sklearn.datasets import load_digits

    from s5cl.evaluation.metrics import retrieval_metrics

    digits = load_digits()
    embeddings, labels = digits.data[:400].astype(np.float32), digits.target[:400]
    ours = retrieval_metrics(embeddings, labels, k=5)
    calculator = AccuracyCalculator(
        include=("precision_at_1",), knn_func=CustomKNN(CosineSimilarity())
    )
    theirs = calculator.get_accuracy(torch.from_numpy(embeddings), torch.from_numpy(labels))
    assert ours["precision_at_1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert 0.9 < ours["knn_accuracy"] <= 1 and 0.9 < ours["precision_at_k"] <= 1

    # By hand: two tight triples far apart, each with one image of the other class. With k=2 an
    # image's neighbours are the other two of its triple: 4 of 12 neighbours share the class;
    # votes are right for the two class-0 images of triple A only (1-1 ties go to class 0).
    points = np.array([[1, 0], [1, 0.01], [1, -0.01], [0, 1], [0.01, 1], [-0.01, 1]], float)
    classes = np.array([0, 0, 1, 1, 1, 0])
    by_hand = retrieval_metrics(points, classes, k=2)
    assert by_hand["precision_at_k"] == pytest.approx(4 / 12)
    assert by_hand["knn_accuracy"] == pytest.approx(2 / 6)
