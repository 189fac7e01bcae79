"""`params.yaml`: one section per stage, validated on load.

The pydantic models below are the single source of truth for every parameter: its type,
range, default and description. DVC reads `params.yaml` for caching, the stage scripts validate
it here, and both the Snakemake config schema (`workflow/schemas/params.schema.json`) and the
params reference (`docs/params.md`) are generated from these models
(`python -m s5cl.pipeline.generate write`). Unknown keys and out-of-range values fail with one line
naming
the key and the value.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import typing
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from s5cl.errors import UserError

T = typing.TypeVar("T")
SEED_MAX = 2**32 - 1  # numpy's legacy seeding (the m-per-class sampler) takes no more


def _numeric(annotation: Any) -> bool:
    """int, float, or an optional or list of them: where a yes/no must not pass as 1 or 0."""
    if annotation in (int, float):
        return True
    return any(_numeric(arg) for arg in typing.get_args(annotation) if arg is not type(None))


# model.* keys that decide what the encoder computes; with the seed (a random encoder's weights)
# and the views' settings, what the cached features are made from (the features stage's key)
ENCODER_KEYS = ("arch", "kwargs", "weights", "pool", "freeze", "feature_views", "mean", "std")
FEATURES_MADE_FROM = ("seed", *(f"model.{key}" for key in ENCODER_KEYS), "augment", "compute")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_yes_no_numbers(cls, data: Any) -> Any:
        """YAML reads `true`, `yes` and `on` as True, which pydantic would take as the number 1:
        a number key given a yes/no is a mistake to name, not a 1."""
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                values = value if isinstance(value, list) else [value]
                if (
                    field
                    and _numeric(field.annotation)
                    and any(isinstance(v, bool) for v in values)
                ):
                    raise ValueError(f"{key} = {value!r}: a yes/no, where a number is expected")
        return data


DatasetName = Literal[
    "digits",
    "folder",
    "nct_crc_he_100k",
    "nct_crc_he_100k_nonorm",
    "aml_munich",
    "pathmnist",
    "bloodmnist",
]
NEEDS_ROOT = ("folder", "aml_munich")


class DataParams(Section):
    """Which images, from where, at what size (download and prepare)."""

    name: DatasetName = Field(
        "digits",
        description="the dataset (docs/datasets.md): digits (scikit-learn's, embedded), folder, "
        "nct_crc_he_100k, nct_crc_he_100k_nonorm, aml_munich, pathmnist, bloodmnist",
    )
    root: str | None = Field(
        None,
        description="folder: <root>/<class>/<image> (images without a label in <root>/unlabeled/) "
        "or a CSV of path,label[,subset] (an empty label: no label); aml_munich: your local copy "
        "from TCIA",
    )
    mirror: str | None = Field(
        None, description="fetch the dataset's files from this base URL instead of its host"
    )
    downloads: str = Field(
        "data/downloads", description="where downloaded archives and their unpacked trees are kept"
    )
    size: int = Field(32, ge=8, le=1024, description="images are resized to size x size")
    workers: int | None = Field(
        None, ge=1, description="decoding processes for prepare (default: CPUs, at most 8)"
    )
    recursive: bool = Field(
        False,
        description="folder: images in subfolders of a class folder belong to that class "
        "(false: such a subfolder is an error, so no image is left out unseen)",
    )
    unlabeled_dir: str = Field(
        "unlabeled",
        min_length=1,
        description="folder: the folder beside the class folders that holds images without a "
        "label (its subfolders too)",
    )
    unlabeled_root: str | None = Field(
        None,
        description="more images without a label: a folder (subfolders too) or a CSV of path "
        "(and your own columns); added to any dataset of image files",
    )
    on_bad_image: Literal["error", "skip"] = Field(
        "error",
        description="a file that is not a readable 8-bit image: error names it and stops; skip "
        "leaves it out and lists it in data/packed/<name>/skipped.csv",
    )

    @model_validator(mode="after")
    def _root_where_needed(self) -> DataParams:
        if self.name in NEEDS_ROOT and not self.root:
            raise ValueError(f"data.root is required when data.name is {self.name!r}")
        if self.name not in NEEDS_ROOT and self.root:
            raise ValueError(
                f"data.root is only read for {' and '.join(NEEDS_ROOT)}; set it to null"
            )
        return self

    @field_validator("mirror")
    @classmethod
    def _http_mirror(cls, mirror: str | None) -> str | None:
        if mirror and not mirror.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// base URL")
        return mirror


# Which images get labels: split.select (no model yet) and suggest.strategy
# (s5cl.labelling.selection)
ColdStart = Literal["random", "typiclust", "probcover", "kcenter"]
Strategy = Literal["random", "typiclust", "probcover", "kcenter", "margin", "badge"]


class SplitParams(Section):
    """The label budget and the held-out sets: every image is labeled, unlabeled, val or
    test exactly once, stratified per class, drawn from `seed`."""

    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="per class; ignored when the dataset has its own test set"
    )
    val_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="per class, for monitoring and tuning; ignored when the dataset has its own",
    )
    test_seed: int | None = Field(
        None,
        ge=0,
        le=SEED_MAX,
        description="draw the test images from this seed, not from `seed`: every seed of a "
        "sweep is then scored on the same images, which no choice of settings reads (null: seed)",
    )
    labels_per_class: int | None = Field(
        2, ge=1, description="the label budget; or null and set label_fraction"
    )
    label_fraction: float | None = Field(
        None, gt=0, le=1, description="the label budget as a fraction of each class's pool"
    )
    select: ColdStart = Field(
        "random",
        description="which images of the pool get the labels: random per class, or chosen on "
        "the coldstart stage's self-supervised embedding without seeing any class (the budget "
        "is then classes x labels_per_class, or label_fraction of the whole pool)",
    )
    labeled_csv: str | None = Field(
        None,
        description="a CSV of path,label[,time] (what s5cl label writes: labels/labels.csv): "
        "these images join the labeled set with these class names",
    )
    group: str | None = Field(
        None,
        description="a column of the dataset's CSV (patient, slide, scan): every group's images "
        "stay in one part (test, val or training), so no patient is trained on and tested on",
    )

    @model_validator(mode="after")
    def _one_budget(self) -> SplitParams:
        if (self.labels_per_class is None) == (self.label_fraction is None):
            raise ValueError("set exactly one of split.labels_per_class and split.label_fraction")
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError("split.test_fraction + split.val_fraction must be < 1")
        return self


RESNETS = ("resnet18", "resnet34", "resnet50")  # model.arch's torchvision encoders
TIMM = "timm:"  # model.arch's prefix for any timm model
FREEZE = re.compile(r"none|all|all_but_last_([1-9][0-9]*)")  # model.freeze's forms


class ModelParams(Section):
    """The network: an encoder (a backbone, s5cl.model.backbones), a projection to the embedding
    SupCon works on, a classifier on the embedding."""

    arch: str = Field(
        "resnet18",
        description="the encoder: resnet18, resnet34, resnet50 (torchvision) or timm:<name> "
        "(any timm model; presets for pathology backbones: s5cl backbones)",
    )
    kwargs: dict[str, Any] = Field(
        {},
        description="timm:<name> only: keyword arguments of timm.create_model (img_size, "
        "init_values, dynamic_img_size, reg_tokens, mlp_layer: SwiGLUPacked, act_layer: SiLU)",
    )
    weights: str = Field(
        "none",
        description="none | imagenet (downloads torchvision's or timm's) | path to a local "
        ".pth, .bin or .safetensors file of the encoder (a plain state dict or one in "
        "state_dict/model)",
    )
    pool: Literal["model", "class_and_mean"] = Field(
        "model",
        description="model: the backbone's own pooling; class_and_mean: its class token next "
        "to the mean of its patch tokens (Virchow2, Midnight)",
    )
    freeze: str = Field(
        "none",
        description="none | all (the encoder is fixed; training runs from the features stage's "
        "cache) | all_but_last_<N> (the last N blocks of a ViT, layers of a ResNet, train)",
    )
    lr_scale: float = Field(
        1.0, gt=0, description="learning rate of the trained encoder part, times the phase's lr"
    )
    feature_views: int = Field(
        4, ge=1, le=64, description="freeze: all: weak and strong views cached per image"
    )
    mean: list[float] | None = Field(
        None,
        min_length=3,
        max_length=3,
        description="the normalisation the backbone was trained with, instead of the "
        "dataset's (null: the dataset's mean and std); set with std",
    )
    std: list[float] | None = Field(
        None, min_length=3, max_length=3, description="see mean; every value > 0"
    )
    embedding_dim: int = Field(
        64, ge=2, le=16384, description="size of the embedding SupCon works on"
    )

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        if arch in RESNETS or (arch.startswith(TIMM) and arch.removeprefix(TIMM).strip()):
            return arch
        raise ValueError(f"use one of {', '.join(RESNETS)} or timm:<model name>")

    @field_validator("freeze")
    @classmethod
    def _freeze_form(cls, freeze: str) -> str:
        if not FREEZE.fullmatch(freeze):
            raise ValueError("use none, all or all_but_last_<N> (N >= 1)")
        return freeze

    @model_validator(mode="after")
    def _consistent(self) -> ModelParams:
        if (self.mean is None) != (self.std is None):
            raise ValueError("model.mean and model.std: set both or neither")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"model.std = {self.std}: every value must be > 0")
        if self.kwargs and not self.arch.startswith(TIMM):
            raise ValueError(f"model.kwargs: only read for timm:<name> models, not {self.arch}")
        return self

    @property
    def from_features(self) -> bool:
        """Training runs from the features stage's cache: the whole encoder is fixed."""
        return self.freeze == "all"


class AugmentParams(Section):
    """The weak and strong views every training image is seen as, drawn per image."""

    flip_rotate: bool = Field(
        False, description="flips and 90-degree rotations (weak and strong); off for digits, 6 != 9"
    )
    jitter: float = Field(0.1, ge=0, le=1, description="colour jitter strength (weak and strong)")
    hed_sigma: float = Field(0.01, ge=0, le=0.5, description="HED stain jitter (strong)")
    crop_scale_min: float = Field(0.5, gt=0, le=1, description="random resized crop (strong)")
    affine: float = Field(
        0.05,
        ge=0,
        le=0.5,
        description="random affine a (strong): rotation and shear ±180a degrees, shift ±a, "
        "scale 1±a",
    )


class ComputeParams(Section):
    """How the network runs; the data path is the same either way."""

    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="autocast dtype of the network's forward pass; auto: bf16 on a GPU that "
        "supports it, else fp32 (CPUs without bf16 units run it slower)",
    )
    compile: bool = Field(
        False, description="torch.compile the encoder (slow first steps, faster after; GPU)"
    )
    fuse_augment: bool = Field(
        True,
        description="torch.compile the augmentations' per-pixel steps into one kernel per view "
        "(several times faster; compiled once per process); where it cannot compile, eager "
        "PyTorch with a warning",
    )


class ColdstartParams(Section):
    """The self-supervised embedding the cold-start selections (split.select) choose on:
    instance-only SupCon at s5cl.tau_u (an image's two views are its only positives), the
    network, views, lr and unlabeled batch of s5cl, on the training pool; no label is read.
    With model.freeze: all, the features stage's cached features are the embedding."""

    steps: int = Field(200, ge=1, description="training steps of the embedding")


class SuggestParams(Section):
    """The next round: which unlabeled images to label now (suggest stage, s5cl suggest)."""

    strategy: Strategy = Field(
        "margin",
        description="random | typiclust | probcover | kcenter (on the model's embedding) | "
        "margin (least sure between the top two classes) | badge (uncertain and diverse)",
    )
    count: int = Field(20, ge=1, description="images to suggest")
    batch_size: int = Field(512, ge=1, description="images a forward pass")


class SupervisedParams(Section):
    """Training on labeled images only: SupCon(tau_l) + CE."""

    steps: int = Field(150, ge=1, description="training steps of the phase")
    lr: float = Field(1e-3, gt=0, description="Adamax learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="Adamax weight decay")
    batch_labeled: int = Field(
        32, ge=2, description="labeled images a step (the global batch under torchrun)"
    )
    m_per_class: int = Field(4, ge=1, description="images per class in a labeled batch")
    tau_l: float = Field(0.1, gt=0, description="SupCon temperature on labeled images")
    w_l: float = Field(1.0, ge=0, description="weight of the labeled SupCon term")
    w_c: float = Field(1.0, ge=0, description="weight of the cross-entropy term")
    eval_every: int = Field(50, ge=1, description="steps between validation scores")

    @model_validator(mode="after")
    def _batch_divisible(self) -> SupervisedParams:
        if self.batch_labeled % self.m_per_class:
            raise ValueError(
                f"batch_labeled={self.batch_labeled} must be a multiple of "
                f"m_per_class={self.m_per_class}"
            )
        return self


class S5CLParams(SupervisedParams):
    """Adds the unlabeled stream: SupCon(tau_u) on instance ids (self-supervised)."""

    steps: int = Field(120, ge=1, description="training steps of the s5cl phase")
    batch_unlabeled: int = Field(
        64, ge=2, description="unlabeled images a step (the paper: 128; global under torchrun)"
    )
    tau_u: float = Field(0.7, gt=0, description="SupCon temperature on instance ids")
    w_u: float = Field(1.0, ge=0, description="weight of the unlabeled SupCon term")
    tau_p: float = Field(0.7, gt=0, description="SupCon temperature once targets are pseudo-labels")
    w_p: float = Field(1.0, ge=0, description="weight of the unlabeled term on pseudo-labels")
    switch_step: int | None = Field(
        None, ge=0, description="online switch to pseudo-label targets after this step (paper)"
    )

    @model_validator(mode="after")
    def _hierarchy(self) -> S5CLParams:
        if self.tau_l >= self.tau_u:
            warnings.warn(
                f"s5cl.tau_l={self.tau_l} >= s5cl.tau_u={self.tau_u}: the hierarchy is inverted "
                "(labeled clusters should be tighter than unlabeled ones)",
                stacklevel=2,
            )
        return self


class PseudolabelParams(Section):
    """Which of the s5cl model's predictions on the unlabeled images become pseudo-labels."""

    threshold: float = Field(0.9, ge=0, le=1, description="keep predictions this confident")
    max_per_class: int | None = Field(None, ge=1, description="keep at most this many per class")
    batch_size: int = Field(512, ge=1, description="images a forward pass")


class FixMatchParams(Section):
    """method: fixmatch (Sohn et al. 2020), in the s5cl and retrain phases."""

    threshold: float = Field(0.95, ge=0, le=1, description="confidence a weak view needs")
    weight: float = Field(1.0, ge=0, description="weight of the unlabeled consistency term")


def _inheriting(base: type[Section], section: str) -> dict[str, Any]:
    """`base`'s fields as optional ones whose None means "the value in `section`", each with
    its type, range and meaning: a section that inherits another's keys."""
    fields: dict[str, Any] = {}
    for key, info in base.model_fields.items():
        copied = FieldInfo.merge_field_infos(
            info, default=None, description=f"{info.description} (null: {section}.{key})"
        )
        fields[key] = (info.annotation | None, copied)
    return fields


class _RetrainBase(Section):
    """Continues S5CL with the pseudo-labels of the pseudolabel stage as unlabeled targets
    (tau_p, w_p). Every key of `s5cl:` may be set here for retrain alone; one left out (null)
    is s5cl's."""

    def over(self, base: S5CLParams) -> S5CLParams:
        """`base` with the keys this section sets, checked as one s5cl section."""
        own = {key: value for key, value in self.model_dump().items() if value is not None}
        with warnings.catch_warnings():  # the s5cl section said its own warnings already
            if not own.keys() & {"tau_l", "tau_u"}:
                warnings.simplefilter("ignore")
            return S5CLParams.model_validate({**base.model_dump(), **own})


RetrainParams = create_model(
    "RetrainParams",
    __base__=_RetrainBase,
    __doc__=_RetrainBase.__doc__,
    **{
        **_inheriting(S5CLParams, "s5cl"),
        "steps": (int, Field(120, ge=1, description="training steps of the retrain phase")),
    },
)


class CheckpointParams(Section):
    """Resume checkpoints of the training stages (s5cl.training.resume); they never change
    results."""

    every: int = Field(
        50,
        ge=0,
        description="steps between resume checkpoints in checkpoints/<stage>-<run>.pt (0: none); "
        "a killed stage started again continues from its last one",
    )


class EvaluateParams(Section):
    """Scores of the three models on the test set, and retrieval with their embeddings."""

    batch_size: int = Field(512, ge=1, description="images a forward pass")
    knn_k: int = Field(5, ge=1, description="neighbours for kNN accuracy and precision@k")


Method = Literal["s5cl", "supcon", "ce", "fixmatch", "mpl"]
Metric = Literal[
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "weighted_f1",
    "precision_at_1",
    "precision_at_k",
    "knn_accuracy",
]


class SweepParams(Section):
    """`snakemake sweep`: one cached run per method x budget x seed (workflow/rules/sweep.smk).
    The stages never read this section."""

    methods: list[Method] = Field(
        ["ce", "supcon", "fixmatch", "mpl", "s5cl"], min_length=1, description="methods compared"
    )
    variants: dict[str, dict[str, Any]] = Field(
        {},
        description="named settings compared over the same seeds: each maps section.key to a "
        "value (every run of it gets them as --set), and `methods` to the methods it runs "
        "(default: sweep.methods); the first is what the others are compared with; none: one "
        "variant, `base`, with the params as they are",
    )
    budget: Literal["labels_per_class", "label_fraction"] = Field(
        "labels_per_class", description="which split key the budgets set"
    )
    budgets: list[float] = Field([2], min_length=1, description="label budgets to compare")
    seeds: list[typing.Annotated[int, Field(ge=0, le=SEED_MAX)]] = Field(
        [0], min_length=1, description="seeds of each method and budget"
    )
    selections: list[ColdStart] = Field(
        ["random"],
        min_length=1,
        description="cold-start selections compared (split.select): each variant runs once "
        "per selection, named <selection> (or <variant>-<selection> with variants)",
    )
    rounds: int = Field(
        0,
        ge=0,
        description="after each run, this many rounds of suggest.count more labels chosen by "
        "suggest.strategy and answered by the dataset's own labels (the oracle), each "
        "retrained from split on and scored at its number of labels",
    )
    metric: Metric = Field("accuracy", description="the figure's metric; the tables have all")
    reference: dict[str, dict[float, float]] | None = Field(
        None, description="published figures per method and budget, drawn dashed"
    )

    @model_validator(mode="after")
    def _variants_are_overrides(self) -> SweepParams:
        for name, overrides in self.variants.items():
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"sweep.variants: {name!r}: use letters, digits, - and _")
            for key, value in overrides.items():
                if key == "methods":
                    unknown = set(value) - set(typing.get_args(Method))
                    if unknown or not value:
                        raise ValueError(f"sweep.variants.{name}.methods: {value}: not methods")
                elif key.count(".") != 1 or key.split(".")[0] in ("sweep", "resources"):
                    raise ValueError(
                        f"sweep.variants.{name}: {key!r}: give section.key of a stage's param"
                    )
                elif key.startswith("data."):
                    raise ValueError(
                        f"sweep.variants.{name}: {key}: the runs of a sweep share one packed "
                        "dataset; run one sweep per dataset or image size"
                    )
        return self

    def _named(self) -> dict[str, dict[str, Any]]:
        """Each run variant's name and settings: a variant (`base` where none are given) per
        selection; the selection in the name only where sweep.selections is not [random]."""
        variants = self.variants or {"base": {}}
        if self.selections == ["random"]:
            return dict(variants)
        return {
            (selection if not self.variants else f"{name}-{selection}"): {
                **settings,
                "split.select": selection,
            }
            for name, settings in variants.items()
            for selection in self.selections
        }

    def variant_names(self) -> list[str]:
        """The run variants in order (the first is the baseline)."""
        return list(self._named())

    def _variant(self, name: str) -> dict[str, Any]:
        named = self._named()
        if name not in named:
            raise UserError(f"variant {name!r}: not in sweep.variants {list(named)}")
        return named[name]

    def methods_of(self, variant: str) -> list[str]:
        """The methods a variant runs: its own `methods`, else sweep.methods."""
        return list(self._variant(variant).get("methods", self.methods))

    def sets_of(self, variant: str) -> list[str]:
        """A variant's overrides as --set strings (values in JSON, which YAML reads back)."""
        return [
            f"{key}={json.dumps(value)}"
            for key, value in self._variant(variant).items()
            if key != "methods"
        ]

    @model_validator(mode="after")
    def _budgets_fit_kind(self) -> SweepParams:
        for value in self.budgets:
            if self.budget == "labels_per_class" and (value < 1 or value != int(value)):
                raise ValueError(f"sweep.budgets: {value} is not a whole number of labels >= 1")
            if self.budget == "label_fraction" and not 0 < value <= 1:
                raise ValueError(f"sweep.budgets: fraction {value} is not in (0, 1]")
        return self


class RuleResources(Section):
    """What one Snakemake rule's jobs ask for; a key left out comes from resources.default."""

    cpus: int | None = Field(
        None, ge=1, description="cores: the rule's threads, and sbatch --cpus-per-task"
    )
    mem_mb: int | None = Field(None, ge=1, description="memory in MB (sbatch --mem)")
    runtime: int | None = Field(None, ge=1, description="wall-clock limit in minutes (sbatch -t)")
    gpus: int | None = Field(
        None,
        ge=0,
        description="GPUs (sbatch --gpus); above 1, a training rule runs torchrun with one "
        "process per GPU",
    )


class ResourcesParams(Section):
    """Snakemake only: what each rule's jobs ask of the machine or the cluster (a profile such
    as workflow/profiles/slurm turns them into sbatch options). The stages never read it."""

    default: RuleResources = RuleResources(cpus=1, mem_mb=2000, runtime=30, gpus=0)
    rules: dict[str, RuleResources] = Field(
        {},
        description="per rule (a stage, sweep_run, sweep_aggregate), the keys that differ from "
        "its defaults in the stage table (docs/params.md lists them) over resources.default",
    )

    @model_validator(mode="after")
    def _complete(self) -> ResourcesParams:
        missing = [key for key, value in self.default.model_dump().items() if value is None]
        if missing:
            raise ValueError(f"resources.default must set {', '.join(missing)}")
        return self


class Params(Section):
    seed: int = Field(
        0, ge=0, le=SEED_MAX, description="seed of the split and of every training RNG"
    )
    method: Method = Field(
        "s5cl", description="what the training phases minimise (s5cl.training.methods)"
    )
    data: DataParams = DataParams()
    split: SplitParams = SplitParams()
    model: ModelParams = ModelParams()
    augment: AugmentParams = AugmentParams()
    compute: ComputeParams = ComputeParams()
    warmup: SupervisedParams = SupervisedParams()
    s5cl: S5CLParams = S5CLParams()
    fixmatch: FixMatchParams = FixMatchParams()
    pseudolabel: PseudolabelParams = PseudolabelParams()
    retrain: RetrainParams = RetrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    coldstart: ColdstartParams = ColdstartParams()
    suggest: SuggestParams = SuggestParams()
    checkpoint: CheckpointParams = CheckpointParams()
    sweep: SweepParams = SweepParams()
    resources: ResourcesParams = ResourcesParams()

    @model_validator(mode="after")
    def _retrain_resolves(self) -> Params:
        try:
            self.retrain.over(self.s5cl)
        except ValidationError as error:
            first = error.errors()[0]
            raise ValueError(
                f"retrain (over s5cl): {first['msg'].removeprefix('Value error, ')}"
            ) from None
        return self

    def phase_config(self, section: str) -> SupervisedParams:
        """The settings of the training phase whose section is `section` (config.phases):
        retrain's are s5cl's with its own keys over them."""
        own = getattr(self, section)
        return own.over(self.s5cl) if isinstance(own, _RetrainBase) else own


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml's SafeLoader, but a key given twice in one mapping is an error."""


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            line = seen[key].start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} is given twice (first on line {line}); keep one",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _yaml_where(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    return f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""


def _yaml_problem(error: yaml.YAMLError) -> str:
    problem = getattr(error, "problem", None)
    return problem or str(error).splitlines()[0]


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """`section.key=value` strings -> (dotted key, YAML-parsed value)."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected section.key=value")
        try:
            value = yaml.load(raw, Loader=UniqueKeyLoader)
        except yaml.YAMLError as error:
            problem = _yaml_problem(error)
            raise UserError(f"--set {item!r}: the value is not valid YAML ({problem})") from None
        out.append((key.strip(), value))
    return out


def _describe(error: ValidationError, raw: dict[str, Any]) -> str:
    first = error.errors()[0]
    loc = ".".join(str(part) for part in first["loc"])
    value: Any = raw
    for part in first["loc"]:
        value = value.get(part) if isinstance(value, dict) else None
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"unknown parameter {loc} (check the spelling against params.yaml)"
    if first["loc"] and first["loc"][-1] == "[key]":  # a mapping's key, e.g. a rule's name
        return f"{loc.removesuffix('.[key]')}: unknown name; {message}"
    if loc and not isinstance(value, dict):
        return f"{loc} = {value!r}: {message}"
    if loc and f"{loc}." not in message:  # a section-level check, shared by several sections
        return f"{loc}: {message}"
    return message


def validate(raw: dict[str, Any]) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise UserError(f"bad parameter: {_describe(error, raw)}") from None


def read_yaml(path: Path) -> Any:
    """A YAML file whose every mistake is one line naming the file, line and column: not UTF-8,
    invalid YAML, a key given twice in one mapping (YAML lets the last one win silently)."""
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a params file")
    if not path.exists():
        raise UserError(f"{path}: no such params file (run from the project root)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise UserError(
            f"{path} line {line} column {column}: not UTF-8 text (byte "
            f"0x{data[error.start]:02x}); save the file as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise UserError(f"{path}{_yaml_where(error)}: {_yaml_problem(error)}") from None


def exit_on_mistake(check: typing.Callable[[], T], who: str = "snakemake") -> T:
    """`check()`, or its UserError as one line on stderr and exit 2: the Snakefile reports a
    mistake in params.yaml or an overlay as the stages do, not as a stack of its own lines."""
    try:
        return check()
    except UserError as error:
        print(f"{who}: error: {error}", file=sys.stderr)
        sys.exit(2)


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read params.yaml, apply `--set` overrides, validate everything before any work starts."""
    path = Path(path)
    raw = read_yaml(path)
    if raw is None:  # empty, or only comments: not the built-in defaults without a word
        raise UserError(
            f"{path}: empty; expected the sections of params.yaml (data:, split:, ...; copy "
            "the project's params.yaml)"
        )
    if not isinstance(raw, dict):
        raise UserError(
            f"{path}: holds {type(raw).__name__} {raw!r:.40}, expected a mapping of sections"
        )
    for key, value in parse_overrides(overrides or []):
        _set_dotted(raw, key, value)
    return validate(raw)


def values_of(params: Params, keys: tuple[str, ...]) -> dict[str, Any]:
    """The values of `keys` (sections or dotted keys) as flat dotted keys: what a stage's cache
    and resume checkpoints are keyed on (s5cl.pipeline.stages: a stage's `params`)."""
    dumped = params.model_dump(mode="json")
    flat: dict[str, Any] = {}
    for key in keys:
        section, _, sub = key.partition(".")
        value = dumped[section][sub] if sub else dumped[section]
        if isinstance(value, dict):
            flat |= {f"{key}.{item}": v for item, v in value.items()}
        else:
            flat[key] = value
    return flat


def write_resolved(params: Params, folder: str | Path) -> Path:
    """The whole resolved config as a params file in `folder`, named by its content (for
    Snakemake's rules: every stage reads all of it). A dry run or a second config parsed
    meanwhile writes its own file, so a running job's config is never replaced; the jobs of a
    cluster run parse the workflow again and find the same file."""
    text = yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)
    path = Path(folder) / f"params-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def from_snakemake_config(config: dict[str, Any]) -> Params:
    """Params from Snakemake's config: params.yaml plus `--config` overrides, whose nested
    values Snakemake leaves as strings (`--config 's5cl={tau_u: 0.5}'` gives '0.5').
    Validation converts numbers and booleans as it does for `--set`; 'null' is None here."""

    def typed(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: typed(item) for key, item in value.items()}
        if isinstance(value, list):
            return [typed(item) for item in value]
        return None if value in ("null", "~") else value

    return validate(typed(config))


def json_schema() -> dict[str, Any]:
    """JSON Schema of params.yaml, for Snakemake's `validate` (kept in sync by a test)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Params.model_json_schema()}


if __name__ == "__main__":  # print the Snakemake config schema
    json.dump(json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
