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
from s5cl.io import describe_checkpoint, first_line
from s5cl.params import ModelParams

WRAPPERS = ("state_dict", "model")  # keys a training script often nests its state dict in
PREFIXES = ("module.", "encoder.", "backbone.")  # DDP's, this project's model files', timm's


def _examples(keys: set[str]) -> str:
    return ", ".join(sorted(keys)[:2])


def load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    """Load a ResNet-18 state dict from `path` into `encoder`. Accepted: a plain state dict, one
    wrapped in `state_dict` or `model` (this project's own model files too), with `module.`,
    `encoder.` or `backbone.` prefixes; the classifier (`fc.`) is dropped. Anything else is one
    line saying what the file holds and what was expected."""
    where = f"model.weights={str(path)!r}"
    if not path.is_file():
        raise UserError(f"{where}: no such file (use none, imagenet or the path of a state dict)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling other bytes raises almost anything
        raise UserError(f"{where}: not a PyTorch weights file ({first_line(error)})") from None
    for key in WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{where}: {describe_checkpoint(state)}, expected a state dict of tensors")
    heads = ("embedder.", "classifier.")
    for prefix in PREFIXES:
        if state and all(k.startswith(prefix) for k in state if not k.startswith(heads)):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", *heads))}
    wanted = encoder.state_dict()
    missing, unexpected = set(wanted) - set(state), set(state) - set(wanted)
    shapes = {k for k in set(wanted) & set(state) if wanted[k].shape != state[k].shape}
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {_examples(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {_examples(unexpected)})")
        if shapes:
            key = sorted(shapes)[0]
            parts.append(
                f"{len(shapes)} of other shapes (e.g. {key}: {tuple(state[key].shape)}, "
                f"expected {tuple(wanted[key].shape)})"
            )
        raise UserError(f"{where}: does not fit a resnet18 encoder: {'; '.join(parts)}")
    encoder.load_state_dict(state)


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
            load_encoder_weights(self.encoder, Path(weights))
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
