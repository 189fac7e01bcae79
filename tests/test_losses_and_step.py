import pytest
import torch
from pytorch_metric_learning.losses import SupConLoss

from s5cl.model.network import S5CLNet
from s5cl.training.loop import seed_everything
from s5cl.training.losses import S5CLLoss, supcon
from s5cl.training.methods import step_loss

from .conftest import digit_views


def test_supcon_pairs_the_two_views_of_each_image():
    torch.manual_seed(0)
    emb = torch.randn(12, 8)
    targets = torch.tensor([0, 1, 1, 2, 3, 3])
    expected = SupConLoss(temperature=0.3)(emb, torch.cat([targets, targets]))
    assert torch.allclose(supcon(emb, targets, 0.3), expected)


def test_tighter_temperature_penalises_spread_clusters_more():
    torch.manual_seed(0)
    emb = torch.randn(16, 8)
    targets = torch.arange(8) % 2
    assert supcon(emb, targets, 0.1) > supcon(emb, targets, 0.7)


def test_supcon_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="12 embeddings need 6 targets"):
        supcon(torch.randn(12, 8), torch.arange(5), 0.1)
    with pytest.raises(ValueError, match="must be 2V x D"):
        supcon(torch.randn(12), torch.arange(6), 0.1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        supcon(torch.randn(4, 3), torch.arange(2), 0.0)


def test_s5cl_loss_is_the_weighted_sum_of_its_parts():
    torch.manual_seed(0)
    emb_l, emb_u = torch.randn(8, 4), torch.randn(10, 4)
    labels, logits, inst = torch.tensor([0, 1, 0, 1]), torch.randn(4, 3), torch.arange(5)
    loss, parts = S5CLLoss(0.1, 2.0, 0.5, 0.7, 3.0)(emb_l, labels, logits, emb_u, inst)
    expected = 2.0 * parts["loss_l"] + 0.5 * parts["loss_c"] + 3.0 * parts["loss_u"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("with_unlabeled", [False, True])
def test_one_real_training_step_lowers_the_loss(with_unlabeled):
    seed_everything(0)
    x, y_l = digit_views()
    if not with_unlabeled:
        x = x[: 2 * len(y_l)]
    y_u = torch.arange(16) + 10 if with_unlabeled else None
    model = S5CLNet(num_classes=10).train()
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = S5CLLoss(0.1, 1.0, 1.0, 0.7, 1.0)
    before, _, _ = step_loss(model, x, y_l, y_u, loss_fn)
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    after, _, _ = step_loss(model, x, y_l, y_u, loss_fn)
    assert after.item() < before.item()
