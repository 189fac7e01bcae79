"""The S5CL network: an encoder (s5cl.model.backbones) -> linear embedder -> linear classifier on
the
embedding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from s5cl.config.params import ModelParams
from s5cl.data.augment import normalize, to_float
from s5cl.data.packed import PackedDataset
from s5cl.errors import UserError
from s5cl.io import first_line
from s5cl.model import backbones


class S5CLNet(nn.Module):
    """`embed(x)` is the space the contrastive losses shape; `classifier` reads logits from it.

    The encoder is built from `cfg` (model.arch, kwargs, weights, pool); `image_size` checks
    that a backbone with one input size takes the data's. Parts that `cfg.freeze` fixes get no
    gradients and always run in eval mode (BatchNorm statistics fixed too)."""

    def __init__(
        self,
        num_classes: int,
        cfg: ModelParams | None = None,
        image_size: int | None = None,
        load_weights: bool = True,
    ):
        super().__init__()
        cfg = cfg or ModelParams()
        weights = cfg.weights if load_weights else "none"
        self.arch, self.pool, self.lr_scale = cfg.arch, cfg.pool, cfg.lr_scale
        if weights not in ("none", "imagenet"):
            backbones.check_weights_file(Path(weights), cfg.arch)
        self.encoder = backbones.create_encoder(
            cfg.arch, cfg.kwargs, cfg.pool, imagenet=weights == "imagenet"
        )
        if image_size is not None:
            backbones.check_input_size(self.encoder, cfg.arch, image_size)
        if weights not in ("none", "imagenet"):
            backbones.load_encoder_weights(self.encoder, Path(weights), cfg.arch)
        self.embedder = nn.Linear(backbones.feature_dim(self.encoder, cfg.pool), cfg.embedding_dim)
        self.classifier = nn.Linear(cfg.embedding_dim, num_classes)
        self.frozen = [  # names of the frozen modules
            f"encoder.{name}".rstrip(".")
            for name in backbones.frozen_parts(self.encoder, cfg.freeze)
        ]
        for name in self.frozen:
            self.get_submodule(name).requires_grad_(False)
        if cfg.freeze != "none":  # a ViT's own tokens and position embedding: its stem
            for parameter in self.encoder.parameters(recurse=False):
                parameter.requires_grad_(False)
        self.autocast: torch.dtype | None = None  # set by device.configure

    def train(self, mode: bool = True) -> S5CLNet:
        super().train(mode)
        for name in self.frozen:
            self.get_submodule(name).eval()
        return self

    def optimizer_groups(self, lr: float) -> list[dict[str, Any]]:
        """The parameters an optimizer updates: none of the frozen ones; the encoder's at
        lr * model.lr_scale where that is not 1."""
        if self.lr_scale == 1:
            return [{"params": [p for p in self.parameters() if p.requires_grad]}]
        encoder = {id(p) for p in self.encoder.parameters()}
        trained = [p for p in self.encoder.parameters() if p.requires_grad]
        heads = [p for p in self.parameters() if p.requires_grad and id(p) not in encoder]
        groups = [{"params": trained, "lr": lr * self.lr_scale}, {"params": heads}]
        return [group for group in groups if group["params"]]

    def frozen_keys(self) -> set[str]:
        """The state dict's keys of the frozen parts: their parameters and buffers."""
        fixed = {p for p, t in self.named_parameters() if not t.requires_grad}
        return {
            key
            for key in self.state_dict()
            if key in fixed or any(key.startswith(f"{name}.") for name in self.frozen)
        }

    def trained_state(self) -> dict[str, torch.Tensor]:
        """What training changes, on the CPU: a resume checkpoint holds only this, since the
        frozen parts are rebuilt as they were (a frozen billion-parameter encoder would
        otherwise be written at every checkpoint)."""
        frozen = self.frozen_keys()
        return {k: v.detach().cpu() for k, v in self.state_dict().items() if k not in frozen}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        if not set(missing) <= self.frozen_keys() or unexpected:
            raise RuntimeError(
                f"a resume checkpoint of another network: {len(missing)} keys missing, "
                f"{len(unexpected)} unexpected"
            )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W normalised images -> B x F features of the encoder."""
        return backbones.pool_features(self.encoder, self.encoder(x), self.pool)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W normalised images, or B x F features the frozen encoder already made
        (the features stage's cache) -> B x embedding_dim, in fp32 whatever the autocast
        dtype, so losses and the classifier always see fp32."""
        if x.ndim == 2:
            return self.embedder(x.float())
        if self.autocast is None:
            return self.embedder(self.encode(x))
        with torch.autocast(x.device.type, dtype=self.autocast):
            return self.embedder(self.encode(x)).float()

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


def build_model(
    cfg: ModelParams, num_classes: int, seed: int, image_size: int | None = None
) -> S5CLNet:
    """A new network whose random initial weights depend on `seed` alone."""
    torch.manual_seed(seed)
    return S5CLNet(num_classes, cfg, image_size)


def model_from_checkpoint(checkpoint: dict[str, Any], path: str | Path, fix: str) -> S5CLNet:
    """The network the model file at `path` holds: built as its params say, then given its
    weights (the weights file it started from is not read again). Params, class names or
    weights that do not make that network are one line naming the file, ending in `fix`."""
    try:
        cfg = ModelParams(**checkpoint["params"]["model"])
        names = checkpoint["class_names"]
        if not isinstance(names, list) or len(names) < 2:
            raise ValueError(f"class_names {names!r:.60}: expected a list of 2 or more")
        model = S5CLNet(len(names), cfg, load_weights=False)
        model.load_state_dict(checkpoint["model"])
    except UserError:
        raise
    except (TypeError, KeyError, ValueError, RuntimeError, AttributeError) as error:
        raise UserError(
            f"{path}: its params, classes or weights do not make the network it describes "
            f"({first_line(error)}); {fix}"
        ) from None
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


@torch.no_grad()
def encode_rows(
    model: S5CLNet,
    data: PackedDataset,
    rows: np.ndarray,
    device: torch.device,
    batch_size: int = 512,
) -> np.ndarray:
    """The encoder's features (N x F, fp32) of the packed images `rows`, one batch at a time."""
    model.eval().to(device)
    features = []
    for start in range(0, len(rows), batch_size):
        x = normalize(
            to_float(data.batch(rows[start : start + batch_size], device)), data.mean, data.std
        )
        features.append(model.encode(x.contiguous(memory_format=torch.channels_last)).float().cpu())
    return torch.cat(features).numpy() if features else np.zeros((0, model.embedder.in_features))
