"""The S5CL network: ResNet-18 encoder -> linear embedder -> linear classifier on the embedding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from s5cl.augment import normalize, to_float
from s5cl.datasets.packed import PackedDataset
from s5cl.errors import UserError
from s5cl.params import ModelParams


class S5CLNet(nn.Module):
    """`embed(x)` is the space the contrastive losses shape; `classifier` reads logits from it."""

    def __init__(self, num_classes: int, embedding_dim: int = 64, weights: str = "none"):
        super().__init__()
        self.encoder = resnet18(
            weights=ResNet18_Weights.IMAGENET1K_V1 if weights == "imagenet" else None
        )
        feature_dim = self.encoder.fc.in_features
        self.encoder.fc = nn.Identity()
        if weights not in ("none", "imagenet"):
            path = Path(weights)
            if not path.exists():
                raise UserError(
                    f"model.weights={weights!r}: no such file (use none, imagenet or a path)"
                )
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            self.encoder.load_state_dict(state)
        self.embedder = nn.Linear(feature_dim, embedding_dim)
        self.classifier = nn.Linear(embedding_dim, num_classes)
        self.autocast: torch.dtype | None = None  # set by device.configure

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W normalised images -> B x embedding_dim, in fp32 whatever the autocast
        dtype, so losses and the classifier always see fp32."""
        if self.autocast is None:
            return self.embedder(self.encoder(x))
        with torch.autocast(x.device.type, dtype=self.autocast):
            return self.embedder(self.encoder(x)).float()

    def forward(
        self, x: torch.Tensor, classify: int | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits of x (B x C). With `classify=n`, what an S5CL step needs in one call (so DDP
        sees every parameter it used): the embeddings of all of x (B x D) and the logits of
        its first n rows (n x C)."""
        emb = self.embed(x)
        if classify is None:
            return self.classifier(emb)
        return emb, self.classifier(emb[:classify])


def build_model(cfg: ModelParams, num_classes: int, seed: int) -> S5CLNet:
    """A new network whose random initial weights depend on `seed` alone."""
    torch.manual_seed(seed)
    return S5CLNet(num_classes, cfg.embedding_dim, cfg.weights)


def model_from_checkpoint(checkpoint: dict[str, Any]) -> S5CLNet:
    model = S5CLNet(len(checkpoint["class_names"]), checkpoint["params"]["model"]["embedding_dim"])
    model.load_state_dict(checkpoint["model"])
    return model


@torch.no_grad()
def embed_and_predict(
    model: S5CLNet,
    data: PackedDataset,
    rows: np.ndarray,
    device: torch.device,
    batch_size: int = 512,
    progress: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N x D) and class probabilities (N x C) of the packed images `rows`, read
    from the memmap one batch at a time (100K images never sit in memory at once)."""
    from tqdm import tqdm

    model.eval().to(device)
    embeddings, probabilities = [], []
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None, leave=False):
        block = data.batch(rows[start : start + batch_size], device)
        x = normalize(to_float(block), data.mean, data.std)
        emb = model.embed(x.contiguous(memory_format=torch.channels_last))
        embeddings.append(emb.cpu())
        probabilities.append(model.classifier(emb).softmax(1).cpu())
    return torch.cat(embeddings).numpy(), torch.cat(probabilities).numpy()
