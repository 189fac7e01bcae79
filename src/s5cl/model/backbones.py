"""The encoders S5CL trains on: torchvision ResNets and any timm model, their weights (none,
ImageNet, or a local file such as a pathology foundation model's), and which of their parts are
frozen.

    model.arch     resnet18 | resnet34 | resnet50 | timm:<name>  (model.kwargs -> create_model)
    model.weights  none | imagenet (downloads) | a local .pth, .bin or .safetensors file
    model.pool     model (the backbone's own pooling) | class_and_mean (class token next to the
                   mean of the patch tokens, as Virchow2 and Midnight are used)
    model.freeze   none | all | all_but_last_<N> (blocks of a ViT, layers of a ResNet)

An encoder maps B x 3 x H x W images to B x F features (F: `feature_dim`); S5CLNet (network.py)
puts the embedder and classifier on top. The presets for published pathology backbones are in
s5cl.model.presets (`s5cl backbones` lists them).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from s5cl.config.params import FREEZE, TIMM
from s5cl.errors import UserError
from s5cl.io import first_line
from s5cl.model.resnet import resnet
from s5cl.model.torch_files import describe_checkpoint, refused_global

WRAPPERS = ("state_dict", "model")  # keys a training script often nests its state dict in
PREFIXES = ("module.", "encoder.", "backbone.")  # DDP's, this project's model files', others'
HEADS = ("fc.", "head.", "head_dist.", "classifier.")  # classifiers a backbone file may carry
OWN_HEADS = ("embedder.", "classifier.")  # this project's model files


def timm_name(arch: str) -> str | None:
    """'timm:vit_small_patch16_224' -> 'vit_small_patch16_224'; None for a torchvision ResNet."""
    return arch.removeprefix(TIMM) if arch.startswith(TIMM) else None


# ---------------------------------------------------------------- building


def _timm_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """model.kwargs as timm.create_model takes them: a `*_layer` value naming a class of
    timm.layers (mlp_layer: SwiGLUPacked) or of torch.nn (act_layer: SiLU) becomes that class;
    other strings (act_layer: silu) are left for timm to resolve."""
    import timm.layers

    out = {}
    for key, value in kwargs.items():
        if key.endswith("_layer") and isinstance(value, str):
            value = getattr(timm.layers, value, None) or getattr(nn, value, None) or value
        out[key] = value
    return out


def create_encoder(arch: str, kwargs: dict[str, Any], pool: str, imagenet: bool) -> nn.Module:
    """The backbone without its classifier, random or with ImageNet weights (a download)."""
    name = timm_name(arch)
    if name is None:  # (kwargs on a ResNet are refused by ModelParams)
        encoder = resnet(arch)  # torchvision's, without its import (s5cl.model.resnet)
        if imagenet:
            import torchvision

            weights = torchvision.models.get_model_weights(arch).DEFAULT
            encoder.load_state_dict(weights.get_state_dict(progress=True, check_hash=True))
        encoder.fc = nn.Identity()
        return encoder
    import timm

    extra = {"global_pool": ""} if pool == "class_and_mean" else {}
    try:
        return timm.create_model(
            name, pretrained=imagenet, num_classes=0, **extra, **_timm_kwargs(kwargs)
        )
    except RuntimeError as error:  # timm's "Unknown model (...)"
        raise UserError(f"model.arch={arch}: {first_line(error)}") from None
    except TypeError as error:  # a keyword the model does not take
        raise UserError(f"model.kwargs for {arch}: {first_line(error)}") from None


def pool_features(encoder: nn.Module, out: torch.Tensor, pool: str) -> torch.Tensor:
    """The encoder's output -> B x F. class_and_mean: its class token next to the mean of its
    patch tokens (register tokens skipped), from a timm model built with global_pool=''."""
    if pool != "class_and_mean":
        return out
    if out.ndim != 3:
        raise UserError(
            f"model.pool=class_and_mean needs a model that returns tokens; it returned "
            f"{tuple(out.shape)}"
        )
    prefix = getattr(encoder, "num_prefix_tokens", 1)
    return torch.cat([out[:, 0], out[:, prefix:].mean(1)], dim=1)


def feature_dim(encoder: nn.Module, pool: str) -> int:
    """F: the size of what the encoder (and `pool`) gives per image."""
    dim = getattr(encoder, "num_features", None)  # timm's models
    if not isinstance(dim, int):  # a torchvision ResNet: its last block's width
        block = encoder.layer4[-1]
        dim = (block.bn3 if hasattr(block, "bn3") else block.bn2).num_features
    return 2 * dim if pool == "class_and_mean" else dim


def fixed_input_size(encoder: nn.Module) -> int | None:
    """The one image size a backbone takes (a ViT without dynamic_img_size), else None."""
    patch = getattr(encoder, "patch_embed", None)
    if patch is None or not getattr(patch, "strict_img_size", False):
        return None
    size = tuple(getattr(patch, "img_size", ()) or ())
    return int(size[0]) if size else None


def check_input_size(encoder: nn.Module, arch: str, image_size: int) -> None:
    """One line naming both sizes and the params to change, before any work."""
    wanted = fixed_input_size(encoder)
    if wanted is not None and wanted != image_size:
        raise UserError(
            f"model.arch={arch} takes {wanted}x{wanted} images but data.size is {image_size}: "
            f"set data.size: {wanted}, or give the model another size with model.kwargs "
            f"(img_size: {image_size}, or dynamic_img_size: true)"
        )


# ---------------------------------------------------------------- weights from a file


def _examples(keys: set[str]) -> str:
    return ", ".join(sorted(keys)[:2])


def weights_page(arch: str) -> str | None:
    """Where a user gets the weights of the preset with this arch (None: no preset)."""
    from s5cl.model.presets import PRESETS

    return next((p.weights_page for p in PRESETS if p.arch == arch), None)


def check_weights_file(path: Path, arch: str) -> None:
    """A missing file is one line naming it and where the preset's weights come from (before
    a billion-parameter model is built for nothing)."""
    if not path.is_file():
        page = weights_page(arch)
        hint = f"; get the weights from {page}" if page else ""
        raise UserError(
            f"model.weights={str(path)!r}: no such file (use none, imagenet or the path of a "
            f"state dict){hint}"
        )


def read_state_dict(path: Path, arch: str) -> dict[str, torch.Tensor]:
    """A state dict of tensors from a .pth/.bin (torch.load, weights only) or .safetensors
    file, unwrapped from `state_dict`/`model`; every other content is one line saying what it
    is."""
    check_weights_file(path, arch)
    where = f"model.weights={str(path)!r}"
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling other bytes raises almost anything
        if (refused := refused_global(error)) is not None:  # weights_only refused a call
            raise UserError(
                f"{where}: holds {refused}, which a weights file never needs; it was not run "
                "(docs/security.md)"
            ) from None
        kind = "safetensors" if path.suffix == ".safetensors" else "PyTorch weights"
        raise UserError(f"{where}: not a {kind} file ({first_line(error)})") from None
    for key in WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{where}: {describe_checkpoint(state)}, expected a state dict of tensors")
    return state


# Hugging Face transformers' DINOv2 names (4.x, in which Phikon-v2 and Midnight were saved, and
# 5.x) -> timm's VisionTransformer names. Stacked: parts concatenated into one timm tensor.
HF_STACKED = (
    (("attention.attention.query", "attention.attention.key", "attention.attention.value"),
     "attn.qkv"),
    (("attention.q_proj", "attention.k_proj", "attention.v_proj"), "attn.qkv"),
    (("mlp.gate_proj", "mlp.up_proj"), "mlp.fc1"),  # SwiGLU: silu(gate) * up, as SwiGLUPacked
)  # fmt: skip
HF_RENAMED = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.": "patch_embed.proj.",
    "attention.output.dense.": "attn.proj.",
    "attention.o_proj.": "attn.proj.",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.weights_in.": "mlp.fc1.",  # 4.x SwiGLU, packed already
    "mlp.weights_out.": "mlp.fc2.",
    "mlp.down_proj.": "mlp.fc2.",
    "layernorm.": "norm.",
}


def from_transformers_dinov2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of transformers' Dinov2Model (Phikon-v2 and Midnight ship theirs so) in
    timm's names, the mask token dropped; any other state dict is returned as it is."""
    if "embeddings.patch_embeddings.projection.weight" not in state:
        return state
    out: dict[str, torch.Tensor] = {}
    stacked: dict[str, list[torch.Tensor | None]] = {}
    for key, value in state.items():
        if key == "embeddings.mask_token":
            continue
        name = key.replace("encoder.layer.", "blocks.")
        for parts, target in HF_STACKED:
            found = next((i for i, part in enumerate(parts) if f".{part}." in name), None)
            if found is not None:
                block, _, leaf = name.partition(f".{parts[found]}.")
                stacked.setdefault(f"{block}.{target}.{leaf}", [None] * len(parts))[found] = value
                break
        else:
            for old, new in HF_RENAMED.items():
                name = name.replace(old, new)
            out[name] = value
    for name, parts in stacked.items():
        if any(part is None for part in parts):
            raise UserError(f"model.weights: a DINOv2 file with part of {name} missing")
        out[name] = torch.cat(parts)  # type: ignore[arg-type]
    return out


def load_encoder_weights(encoder: nn.Module, path: Path, arch: str) -> None:
    """Load the backbone weights in `path` into `encoder`. Accepted: a plain state dict or one
    wrapped in `state_dict`/`model` (this project's model files too), with `module.`,
    `encoder.` or `backbone.` prefixes, in timm's format, one timm converts (DINOv2's original
    one, for example) or transformers' DINOv2 one; a classifier in the file is dropped. Keys
    that do not fit are one line with the numbers of missing and unexpected keys and two
    examples of each."""
    state = read_state_dict(path, arch)
    for prefix in PREFIXES:
        if state and all(k.startswith(prefix) for k in state if not k.startswith(OWN_HEADS)):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(OWN_HEADS)}
    if timm_name(arch) is not None:
        state = from_transformers_dinov2(state)
        convert = getattr(sys.modules[type(encoder).__module__], "checkpoint_filter_fn", None)
        if convert is not None:  # a file in another format is reported below
            with contextlib.suppress(Exception):
                state = convert(state, encoder)
    wanted = encoder.state_dict()
    state = {k: v for k, v in state.items() if k in wanted or not k.startswith(HEADS)}
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
        raise UserError(
            f"model.weights={str(path)!r}: does not fit a {arch} encoder: {'; '.join(parts)}"
        )
    encoder.load_state_dict(state)


# ---------------------------------------------------------------- freezing


def blocks(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's blocks in order, what all_but_last_<N> counts: a ResNet's layer1..layer4,
    a timm ViT's `blocks`, a hierarchical model's `stages` or `layers`."""
    if all(hasattr(encoder, f"layer{i}") for i in range(1, 5)):
        return [getattr(encoder, f"layer{i}") for i in range(1, 5)]
    for name in ("blocks", "stages", "layers"):
        found = getattr(encoder, name, None)
        if isinstance(found, nn.Sequential | nn.ModuleList):
            return list(found)
    raise UserError(
        f"model.freeze=all_but_last_<N>: {type(encoder).__name__} has no blocks, stages or "
        "layers to count; use none or all"
    )


def frozen_parts(encoder: nn.Module, freeze: str) -> list[str]:
    """The names (in `encoder`; "" is all of it) of the modules `freeze` keeps fixed: nothing,
    the whole encoder, or everything before its last N blocks (what follows them, such as a
    final norm, trains with them). Names, not modules: torchrun's SyncBatchNorm replaces
    BatchNorm modules, and a frozen one must stay in eval mode after that too."""
    match = FREEZE.fullmatch(freeze)
    if match is None:
        raise UserError(f"model.freeze={freeze!r}: use none, all or all_but_last_<N>")
    if freeze == "none":
        return []
    if freeze == "all":
        return [""]
    trained = int(match.group(1))
    found = blocks(encoder)
    if trained > len(found):
        raise UserError(
            f"model.freeze={freeze}: the encoder has {len(found)} blocks; use at most "
            f"all_but_last_{len(found)}, or none"
        )
    keep = {id(m) for m in found[-trained:]}
    inside = {id(m) for block in found for m in block.modules()}
    after = False
    frozen: list[nn.Module] = list(found[: len(found) - trained])
    for child in encoder.children():
        holds_blocks = any(id(m) in inside for m in child.modules())
        if holds_blocks:
            after = after or any(id(m) in keep for m in child.modules())
            continue
        if not after:
            frozen.append(child)  # the stem: patch embedding, first convolution
    names = {id(module): name for name, module in encoder.named_modules()}
    return [names[id(module)] for module in frozen]
