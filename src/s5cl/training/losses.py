"""The S5CL objective: a hierarchy of supervised contrastive losses plus cross-entropy.

    loss = w_l * SupCon_{tau_l}(labeled weak+strong, class labels)
         + w_u * SupCon_{tau_u}(unlabeled weak+strong, targets_u)
         + w_c * CE(classifier(labeled weak), class labels)

`targets_u` are instance ids (self-supervised: an image's two views are its only positives) or
pseudo-labels (semi-supervised). SupCon is pytorch-metric-learning's SupConLoss: cosine
similarity, mean over positive pairs, anchors without a positive skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import SupConLoss

from s5cl.training import distributed


def _check_views(embeddings: torch.Tensor, targets: torch.Tensor, name: str) -> None:
    if embeddings.ndim != 2:
        raise ValueError(f"{name}: embeddings must be 2V x D, got shape {tuple(embeddings.shape)}")
    if targets.ndim != 1 or 2 * len(targets) != len(embeddings):
        raise ValueError(
            f"{name}: {len(embeddings)} embeddings need {len(embeddings) // 2} targets "
            f"(one per image, two views each), got shape {tuple(targets.shape)}"
        )


def supcon(embeddings: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon over two views per image, over the global batch.

    embeddings: 2B x D, the B weak views then the B strong views (any scale; cosine inside).
    targets: B integer labels; view i and view B+i share targets[i].
    Under torchrun these are one rank's share: the views and targets of every rank are
    gathered first, so each rank computes the loss of the whole global batch.
    """
    _check_views(embeddings, targets, "supcon")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    embeddings, targets = distributed.gather_views(embeddings), distributed.gather(targets)
    return SupConLoss(temperature=temperature)(embeddings, torch.cat([targets, targets]))


@dataclass(frozen=True)
class S5CLLoss:
    tau_l: float
    w_l: float
    w_c: float
    tau_u: float = 0.7
    w_u: float = 0.0

    def __call__(
        self,
        emb_labeled: torch.Tensor,
        labels: torch.Tensor,
        logits_weak: torch.Tensor,
        emb_unlabeled: torch.Tensor | None = None,
        targets_u: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """emb_labeled: 2B_l x D; labels: B_l; logits_weak: B_l x C (classifier on weak views);
        emb_unlabeled: 2B_u x D and targets_u: B_u, or both None for the supervised loss alone.

        Returns the total loss and its weighted-free parts for logging.
        """
        if logits_weak.shape[0] != labels.shape[0]:
            raise ValueError(f"logits for {logits_weak.shape[0]} images, {labels.shape[0]} labels")
        loss_c = F.cross_entropy(logits_weak, labels)
        parts = {"loss_c": loss_c.item()}
        if self.w_l:  # w_l = 0 is the cross-entropy baseline: skip the SupCon work
            loss_l = supcon(emb_labeled, labels, self.tau_l)
            total = self.w_l * loss_l + self.w_c * loss_c
            parts["loss_l"] = loss_l.item()
        else:
            total = self.w_c * loss_c
        if emb_unlabeled is not None:
            if targets_u is None:
                raise ValueError("emb_unlabeled given without targets_u")
            loss_u = supcon(emb_unlabeled, targets_u, self.tau_u)
            total = total + self.w_u * loss_u
            parts["loss_u"] = loss_u.item()
        parts["loss"] = total.item()
        return total, parts
