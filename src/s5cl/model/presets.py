"""Presets for published pathology and haematology backbones: how timm builds each one, the
size of its features, the images and normalisation it was trained with, its licence and where
a user gets its (often gated) weights. Facts from each model card (cited in docs/backbones.md).

Each preset is written as an overlay, workflow/presets/backbones/<name>.yaml, by
`python -m s5cl.pipeline.generate write` (a test keeps them equal); `s5cl backbones` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
FOLDER = "workflow/presets/backbones"


@dataclass(frozen=True)
class Preset:
    name: str  # the overlay's file name
    title: str
    arch: str  # model.arch
    kwargs: dict[str, Any]  # model.kwargs, as the model card passes them to timm.create_model
    dim: int  # features per image (what the embedder reads)
    input_size: int  # the image size it was trained on (data.size)
    mean: list[float]
    std: list[float]
    licence: str
    weights_page: str  # where a user asks for and downloads the weights
    weights_file: str  # the file to give model.weights
    card: str  # the model card the facts come from
    pool: str = "model"
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # other params the overlay sets

    def overlay(self) -> dict[str, Any]:
        """The params this preset sets (a --configfile for Snakemake)."""
        model = {
            "arch": self.arch,
            "kwargs": self.kwargs,
            "pool": self.pool,
            "weights": f"weights/{self.weights_file}",
            "freeze": "all",
            "mean": self.mean,
            "std": self.std,
        }
        return {"data": {"size": self.input_size}, "model": model, **self.extra}


SWIGLU = {"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}

PRESETS: tuple[Preset, ...] = (
    Preset(
        name="uni",
        title="UNI (Mahmood Lab), ViT-L/16",
        arch="timm:vit_large_patch16_224",
        kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
        dim=1024,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        licence="CC-BY-NC-ND-4.0 (gated, academic non-commercial use)",
        weights_page="https://huggingface.co/MahmoodLab/UNI",
        weights_file="uni/pytorch_model.bin",
        card="https://huggingface.co/MahmoodLab/UNI",
    ),
    Preset(
        name="uni2_h",
        title="UNI2-h (Mahmood Lab), ViT-H/14 with 8 registers",
        arch="timm:vit_giant_patch14_224",
        kwargs={
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 5.33334,
            "no_embed_class": True,
            "reg_tokens": 8,
            "dynamic_img_size": True,
            **SWIGLU,
        },
        dim=1536,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        licence="CC-BY-NC-ND-4.0 (gated, academic non-commercial use)",
        weights_page="https://huggingface.co/MahmoodLab/UNI2-h",
        weights_file="uni2_h/pytorch_model.bin",
        card="https://huggingface.co/MahmoodLab/UNI2-h",
    ),
    Preset(
        name="virchow2",
        title="Virchow2 (Paige), ViT-H/14 with 4 registers",
        arch="timm:vit_huge_patch14_224",
        kwargs={
            "img_size": 224,
            "init_values": 1e-5,
            "mlp_ratio": 5.3375,
            "reg_tokens": 4,
            "dynamic_img_size": True,
            **SWIGLU,
        },
        dim=2560,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        licence="CC-BY-NC-ND-4.0 (gated, non-commercial use)",
        weights_page="https://huggingface.co/paige-ai/Virchow2",
        weights_file="virchow2/pytorch_model.bin",
        card="https://huggingface.co/paige-ai/Virchow2",
        pool="class_and_mean",
        notes="the embedding is the class token next to the mean of the 256 patch tokens",
    ),
    Preset(
        name="h_optimus_0",
        title="H-optimus-0 (Bioptimus), ViT-g/14 with 4 registers",
        arch="timm:vit_giant_patch14_reg4_dinov2",
        kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
        dim=1536,
        input_size=224,
        mean=[0.707223, 0.578729, 0.703617],
        std=[0.211883, 0.230117, 0.177517],
        licence="Apache-2.0",
        weights_page="https://huggingface.co/bioptimus/H-optimus-0",
        weights_file="h_optimus_0/pytorch_model.bin",
        card="https://huggingface.co/bioptimus/H-optimus-0",
    ),
    Preset(
        name="prov_gigapath",
        title="Prov-GigaPath tile encoder (Providence, Microsoft), ViT-g/16",
        arch="timm:vit_giant_patch14_dinov2",
        kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "mlp_ratio": 5.33334},
        dim=1536,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        licence="Apache-2.0 (gated)",
        weights_page="https://huggingface.co/prov-gigapath/prov-gigapath",
        weights_file="prov_gigapath/pytorch_model.bin",
        card="https://huggingface.co/prov-gigapath/prov-gigapath",
    ),
    Preset(
        name="phikon_v2",
        title="Phikon-v2 (Owkin), DINOv2 ViT-L/16",
        arch="timm:vit_large_patch16_224",
        kwargs={"img_size": 224, "init_values": 1e-5},
        dim=1024,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        licence="non-commercial (Owkin's licence, see the card)",
        weights_page="https://huggingface.co/owkin/phikon-v2",
        weights_file="phikon_v2/model.safetensors",
        card="https://huggingface.co/owkin/phikon-v2",
        notes="a transformers Dinov2Model file: its keys are converted to timm's on loading",
    ),
    Preset(
        name="midnight",
        title="Midnight-12k (kaiko.ai), DINOv2 ViT-g/14",
        arch="timm:vit_giant_patch14_dinov2",
        kwargs={"img_size": 224},
        dim=3072,
        input_size=224,
        mean=[0.5, 0.5, 0.5],
        std=[0.5, 0.5, 0.5],
        licence="MIT",
        weights_page="https://huggingface.co/kaiko-ai/midnight",
        weights_file="midnight/model.safetensors",
        card="https://huggingface.co/kaiko-ai/midnight",
        pool="class_and_mean",
        notes="a transformers Dinov2Model file (converted to timm's keys on loading); the "
        "embedding is the class token next to the mean of the patch tokens",
    ),
    Preset(
        name="dinobloom_s",
        title="DinoBloom-S (Marr Lab), DINOv2 ViT-S/14 for blood cells",
        arch="timm:vit_small_patch14_dinov2",
        kwargs={"img_size": 224},
        dim=384,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        licence="Apache-2.0",
        weights_page="https://huggingface.co/MarrLab/DinoBloom",
        weights_file="dinobloom/DinoBloom-S.pth",
        card="https://github.com/marrlab/DinoBloom",
        notes="DinoBloom-B, -L and -G: vit_base/large/giant_patch14_dinov2 (768, 1024, 1536)",
    ),
)


def overlay_yaml(preset: Preset) -> str:
    """workflow/presets/backbones/<name>.yaml: the overlay, with what a user must know first."""
    import yaml

    head = (
        f"# GENERATED from src/s5cl/model/presets.py by `python -m s5cl.pipeline.generate write`.\n"
        f"# {preset.title}: {preset.dim} features per {preset.input_size}x"
        f"{preset.input_size} image.\n"
        f"# Licence: {preset.licence}. Model card: {preset.card}\n"
        f"# Weights: request and download them from {preset.weights_page}, then put them at\n"
        f"# model.weights (or change it). Frozen, from cached features:\n"
        f"#   snakemake --cores 8 --configfile {FOLDER}/{preset.name}.yaml\n"
        f"# Fine-tuned: add --config 'model={{freeze: all_but_last_2, lr_scale: 0.1}}'.\n"
    )
    if preset.notes:
        head += f"# Note: {preset.notes}.\n"
    return head + yaml.safe_dump(preset.overlay(), sort_keys=False, width=100)


def preset_files() -> dict[str, str]:
    """Every preset's overlay file: path -> content."""
    return {f"{FOLDER}/{p.name}.yaml": overlay_yaml(p) for p in PRESETS}


def table() -> str:
    """`s5cl backbones`: one row per preset."""
    head = ("preset", "arch", "dim", "input", "licence", "weights")
    rows = [
        (p.name, p.arch, str(p.dim), f"{p.input_size}px", p.licence.split(" (")[0], p.weights_page)
        for p in PRESETS
    ]
    widths = [max(len(row[i]) for row in (head, *rows)) for i in range(len(head))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (head, *rows)
    ]
    use = f"use one: --configfile {FOLDER}/<preset>.yaml (docs/backbones.md)"
    return "\n".join(lines) + "\n\n" + use
