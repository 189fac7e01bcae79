"""Backbones: torchvision ResNets and timm models, weights from local files, the presets of
pathology backbones, freezing, and frozen runs from the features stage's cache. CPU only, no
network: weights are random and saved here."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from s5cl import layout
from s5cl.config.params import RESNETS, ModelParams, Params, load_params
from s5cl.errors import UserError
from s5cl.model import backbones
from s5cl.model.network import S5CLNet, build_model, model_from_checkpoint
from s5cl.model.presets import PRESETS
from s5cl.model.resnet import ARCHS, resnet
from s5cl.pipeline import stages
from s5cl.training.methods import make_objective

from .conftest import PBC, TINY, digit_views, needs_shared, write_params

# A ViT small enough for tests: 32 px images in 8 x 8 patches, 2 blocks.
VIT = {"arch": "timm:vit_tiny_patch16_224", "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2}}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_each_preset_builds_its_architecture_and_feature_size(preset):
    """On the meta device (no memory, no compute: 1.1B-parameter models in a second), the
    preset's timm name and kwargs give a network whose features have the card's size."""
    with torch.device("meta"):
        encoder = backbones.create_encoder(preset.arch, preset.kwargs, preset.pool, False)
        x = torch.empty(2, 3, preset.input_size, preset.input_size)
        out = backbones.pool_features(encoder, encoder(x), preset.pool)
    assert tuple(out.shape) == (2, preset.dim)
    assert backbones.feature_dim(encoder, preset.pool) == preset.dim
    assert preset.weights_page.startswith("https://") and preset.licence
    Params.model_validate(preset.overlay())  # the overlay is valid params


def test_a_preset_with_random_weights_runs_for_real():
    """DinoBloom-S is small enough to run: random weights, a real forward pass at 224 px."""
    preset = next(p for p in PRESETS if p.name == "dinobloom_s")
    torch.manual_seed(0)
    model = S5CLNet(3, ModelParams(arch=preset.arch, kwargs=preset.kwargs), image_size=224)
    out = model.encode(torch.randn(1, 3, 224, 224))
    assert model.embedder.in_features == preset.dim == out.shape[1]


@pytest.mark.parametrize(
    ("arch", "kwargs", "dim"),
    [
        ("resnet18", {}, 512),
        ("resnet34", {}, 512),
        ("resnet50", {}, 2048),
        (VIT["arch"], VIT["kwargs"], 192),
    ],
)
def test_the_embedder_reads_the_backbones_feature_size(arch, kwargs, dim):
    model = S5CLNet(4, ModelParams(arch=arch, kwargs=kwargs), image_size=32)
    assert model.embedder.in_features == dim
    assert model.embed(torch.randn(2, 3, 32, 32)).shape == (2, 64)


def _save(state: dict, path: Path, wrap: str | None = None) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save({wrap: state} if wrap else state, path)


@pytest.mark.parametrize(
    ("cfg", "name", "wrap"),
    [
        ({"arch": "resnet34"}, "r34.pth", None),
        ({"arch": "resnet34"}, "r34.safetensors", None),
        (VIT, "vit.pth", "state_dict"),
        (VIT, "vit.bin", "model"),
        (VIT, "vit.safetensors", None),
    ],
)
def test_weights_from_a_local_file_load_every_tensor(tmp_path, cfg, name, wrap):
    torch.manual_seed(1)
    source = backbones.create_encoder(cfg["arch"], cfg.get("kwargs", {}), "model", False)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / name
    _save(state, path, wrap)
    torch.manual_seed(2)  # another random start: everything must come from the file
    model = S5CLNet(3, ModelParams(**cfg, weights=str(path)), image_size=32)
    loaded = model.encoder.state_dict()
    assert loaded.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor), key


def test_weights_that_do_not_fit_are_one_line_with_counts_and_examples(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(backbones.create_encoder("resnet18", {}, "model", False).state_dict(), path)
    with pytest.raises(UserError) as error:
        S5CLNet(3, ModelParams(**VIT, weights=str(path)), image_size=32)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"model.weights='{path}': does not fit a timm:vit_tiny_patch16_224")
    assert "missing keys (e.g. blocks.0.attn.proj.bias, blocks.0.attn.proj.weight)" in message
    assert "unexpected keys (e.g. bn1.bias, bn1.num_batches_tracked)" in message


def test_a_missing_weights_file_names_the_presets_download_page(tmp_path):
    preset = next(p for p in PRESETS if p.name == "h_optimus_0")
    cfg = ModelParams(arch=preset.arch, kwargs=preset.kwargs, weights=str(tmp_path / "h0.bin"))
    with pytest.raises(UserError, match=r"get the weights from https://huggingface\.co/bioptimus"):
        S5CLNet(3, cfg)


def test_a_backbone_of_one_input_size_on_other_images_is_one_line():
    with pytest.raises(UserError) as error:
        S5CLNet(3, ModelParams(arch="timm:vit_small_patch16_224"), image_size=32)
    assert str(error.value) == (
        "model.arch=timm:vit_small_patch16_224 takes 224x224 images but data.size is 32: set "
        "data.size: 224, or give the model another size with model.kwargs (img_size: 32, or "
        "dynamic_img_size: true)"
    )


def test_bad_model_params_are_refused_before_any_work():
    for raw, words in [
        ({"arch": "vgg16"}, "timm:<model name>"),
        ({"freeze": "all_but_last_0"}, "all_but_last_<N>"),
        ({"kwargs": {"img_size": 32}}, "only read for timm"),
        ({"mean": [0.5, 0.5, 0.5]}, "set both or neither"),
    ]:
        with pytest.raises(ValueError, match=words.replace("(", r"\(")):
            ModelParams(**raw)
    with pytest.raises(UserError, match=r"has 4 blocks; use at most all_but_last_4"):
        S5CLNet(3, ModelParams(freeze="all_but_last_5"))


@pytest.mark.parametrize(
    ("cfg", "trained"),
    [
        ({"arch": "resnet18", "freeze": "all_but_last_1"}, "layer4."),
        ({**VIT, "freeze": "all_but_last_1"}, ("blocks.1.", "norm.")),
        ({"arch": "resnet18", "freeze": "all"}, None),
    ],
)
def test_frozen_parts_stay_bit_identical_and_get_no_optimizer_state(cfg, trained):
    """A few real S5CL steps through the encoder: frozen tensors (BatchNorm statistics too)
    keep their bits, the trained ones move, at lr * lr_scale."""
    params = Params.model_validate({"model": {**cfg, "lr_scale": 0.5}})
    torch.manual_seed(0)
    model = S5CLNet(4, params.model, image_size=32).train()
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    objective = make_objective(stages.get("warmup").phase, model, params, 4)
    x, y = digit_views()
    for step in range(3):
        objective.update(x[:32], y, None, step)
    after = model.encoder.state_dict()
    moved = {key for key, tensor in before.items() if not torch.equal(after[key], tensor)}
    trains = {key for key in before if trained is not None and key.startswith(trained)}
    assert moved <= trains  # every frozen tensor has its bits
    assert bool(moved) == bool(trains)
    in_optimizer = {id(p) for g in objective.optimizer.param_groups for p in g["params"]}
    for name, parameter in model.encoder.named_parameters():
        assert (id(parameter) in in_optimizer) == parameter.requires_grad, name
    if trained is not None:
        assert [g["lr"] for g in objective.optimizer.param_groups] == [0.5e-3, 1e-3]


def test_resume_checkpoints_leave_out_the_frozen_parts_and_restore_the_rest():
    cfg = ModelParams(freeze="all_but_last_1")
    torch.manual_seed(0)
    trained = S5CLNet(4, cfg)
    torch.nn.init.normal_(trained.encoder.layer4[0].conv1.weight)  # "trained" since
    state = trained.trained_state()
    assert all(k.startswith(("encoder.layer4.", "embedder.", "classifier.")) for k in state)
    torch.manual_seed(0)
    rebuilt = S5CLNet(4, cfg)  # as a resumed run builds it
    rebuilt.load_trained_state(state)
    for key, tensor in trained.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], tensor), key
    with pytest.raises(RuntimeError, match="another network"):
        S5CLNet(4, ModelParams()).load_trained_state(state)


def test_a_head_step_from_cached_features_equals_a_step_through_the_frozen_backbone():
    """The same views, once through the frozen encoder and once as its cached fp16 features:
    the same loss and the same updated heads. The encoder's output is rounded to fp16 as the
    cache stores it, so the two paths must agree bit for bit."""
    params = Params.model_validate({"model": {"freeze": "all"}})
    torch.manual_seed(0)
    model = S5CLNet(4, params.model, image_size=32).train()
    x, y = digit_views()
    with torch.no_grad():
        cached = model.encode(x).half().float()  # what the features stage stores
    through, from_cache = copy.deepcopy(model), copy.deepcopy(model)
    through.encoder = torch.nn.Sequential(through.encoder, _ToHalfAndBack())
    through.frozen = ["encoder"]
    phase = stages.get("s5cl").phase
    from s5cl.training.methods import UnlabeledTargets

    targets = UnlabeledTargets("instance", 0.7, 1.0, 0.7, 1.0)
    results = []
    for net in (through, from_cache):
        objective = make_objective(phase, net, params, 4, targets)
        inputs = x if net is through else cached
        results.append(objective.update(inputs, y, np.arange(16), 0))
    assert results[0][0] == results[1][0]  # every loss part
    assert torch.equal(results[0][1], results[1][1])  # logits
    for name in ("embedder", "classifier"):
        pairs = zip(through.get_submodule(name).parameters(),
                    from_cache.get_submodule(name).parameters(), strict=True)  # fmt: skip
        for a, b in pairs:
            assert torch.equal(a, b), name


class _ToHalfAndBack(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.half().float()


def _in_process(project: Path, monkeypatch, overrides: list[str], *names: str) -> Params:
    monkeypatch.chdir(project)
    params = load_params(project / "params.yaml", overrides)
    for name in names:
        stages.function(name)(params)
    return params


ALL = [s.name for s in stages.STAGES if s.name != "report"]


def test_frozen_run_from_cached_features_on_digits(project, monkeypatch):
    """The whole pipeline with a frozen random ResNet-18: the features stage caches views,
    the phases train only the heads from it, evaluate and pseudolabel run the full model."""
    write_params(project, TINY)
    sets = ["model.freeze=all", "model.feature_views=1"]
    params = _in_process(project, monkeypatch, sets, *ALL)
    info = (project / layout.FEATURES_INFO).read_text()
    views = np.load(project / layout.FEATURES / "views.npy", mmap_mode="r")
    assert views.shape == (1797, 2, 1, 512) and views.dtype == np.float16
    assert '"used": true' in info
    fresh = build_model(params.model, 10, params.seed, 32).encoder.state_dict()
    for stage in ("warmup", "retrain"):
        model = torch.load(layout.model_path(stage), weights_only=False)
        for key, tensor in fresh.items():
            assert torch.equal(model["model"][f"encoder.{key}"], tensor), (stage, key)
    scores = (project / "metrics/evaluate.json").read_text()
    assert '"accuracy"' in scores

    # The cache of other params is refused with what differs, not silently used.
    from s5cl.training.feature_cache import FeatureCache

    other = load_params(project / "params.yaml", [*sets, "augment.jitter=0.2"])
    with pytest.raises(UserError, match=r"made for other augment.jitter; rerun the features"):
        FeatureCache.open(other)


def test_the_features_stage_stores_what_the_encoder_gives_for_its_views(project, monkeypatch):
    """Batch k of view v is made again alone from its seed: the cache holds exactly what the
    frozen encoder gives for those views. The same computation as the stage's (the model
    configured as the stage configures it: channels_last weights, the same augmentation
    kernels, chunk and batch shape), so the comparison is bitwise on any CPU: a contiguous
    model, or another batch shape, picks other oneDNN kernels on AVX-512 and differs in the
    last bits of fp16."""
    from s5cl.data.augment import pixel_kernels, training_views
    from s5cl.pipeline.common import open_packed
    from s5cl.training.device import augment_chunk, configure
    from s5cl.training.feature_cache import BATCH, VIEW_SEED, encoder_features

    write_params(project, TINY)
    params = _in_process(
        project, monkeypatch, ["model.freeze=all", "model.feature_views=2"],
        "download", "prepare", "features",
    )  # fmt: skip
    data = open_packed(params)
    cpu = torch.device("cpu")
    model = build_model(params.model, 10, params.seed, 32).eval()
    configure(model, params.compute, cpu)
    kernels = pixel_kernels(params.compute.fuse_augment, cpu)
    views = np.load(layout.FEATURES / "views.npy", mmap_mode="r")
    gen = torch.Generator().manual_seed(VIEW_SEED + 1)
    for start in range(0, 2 * BATCH, BATCH):  # batches 0 and 1 of view 1
        rows = np.arange(start, start + BATCH)
        x = training_views([data.batch(rows, cpu)], params.augment, gen, data.mean, data.std,
                           augment_chunk(cpu), channels_last=True, kernels=kernels)  # fmt: skip
        with torch.no_grad():
            out = encoder_features(model, x)
        assert np.array_equal(views[rows, 0, 1], out[:BATCH])
        assert np.array_equal(views[rows, 1, 1], out[BATCH:])


@needs_shared()
def test_frozen_vit_from_a_safetensors_file_on_pbc240(project, monkeypatch, tmp_path):
    """A timm ViT with weights from a local .safetensors file, the backbone's own
    normalisation, frozen, trained from cached features on the real blood-cell images."""
    from safetensors.torch import save_file

    torch.manual_seed(3)
    encoder = backbones.create_encoder(VIT["arch"], VIT["kwargs"], "model", False)
    weights = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, weights)
    write_params(project, {**TINY, "data.name": "folder"})
    sets = [
        f"data.root={PBC}",
        f"model.arch={VIT['arch']}",
        "model.kwargs={img_size: 32, patch_size: 8, depth: 2}",
        f"model.weights={weights}",
        "model.freeze=all",
        "model.feature_views=2",
        "model.mean=[0.5, 0.5, 0.5]",
        "model.std=[0.5, 0.5, 0.5]",
    ]
    _in_process(project, monkeypatch, sets, *ALL)
    final = torch.load(layout.model_path("retrain"), weights_only=False)
    assert final["mean"] == [0.5, 0.5, 0.5]
    for key, tensor in encoder.state_dict().items():
        assert torch.equal(final["model"][f"encoder.{key}"], tensor), key
    model = model_from_checkpoint(final, "models/final.pt", "rerun retrain")
    assert model.embedder.in_features == 192
    assert len(np.load(layout.FEATURES / "plain.npy", mmap_mode="r")) == 8 * 240


def _in_transformers_4_names(state: dict) -> dict:
    """transformers 5 names (what is installed) -> the 4.x names published files carry."""
    out = {}
    for key, value in state.items():
        for new, old in (("attention.q_proj", "attention.attention.query"),
                         ("attention.k_proj", "attention.attention.key"),
                         ("attention.v_proj", "attention.attention.value"),
                         ("attention.o_proj", "attention.output.dense"),
                         ("mlp.down_proj", "mlp.weights_out")):  # fmt: skip
            key = key.replace(new, old)
        if "mlp.up_proj" in key:
            continue
        if "mlp.gate_proj" in key:  # 4.x packs gate and up into weights_in
            value = torch.cat([value, state[key.replace("gate_proj", "up_proj")]])
            key = key.replace("gate_proj", "weights_in")
        out[key] = value
    return out


@pytest.mark.parametrize("old_names", [False, True], ids=["transformers5", "transformers4"])
@pytest.mark.parametrize("swiglu", [False, True], ids=["mlp", "swiglu"])
def test_transformers_dinov2_weights_load_into_timm_and_give_the_same_features(
    tmp_path, swiglu, old_names
):
    """Phikon-v2 and Midnight ship transformers' Dinov2Model weights. Oracle: a random
    Dinov2Model from transformers itself, its file loaded into the timm ViT of the same shape,
    the same tokens out (after the final norm)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28,
        patch_size=14, use_swiglu_ffn=swiglu, layerscale_value=0.5,
    )  # fmt: skip
    torch.manual_seed(0)
    oracle = transformers.Dinov2Model(config).eval()
    path = tmp_path / "model.safetensors"
    _save(_in_transformers_4_names(oracle.state_dict()) if old_names else oracle.state_dict(), path)
    kwargs = {"img_size": 28, "patch_size": 14, "embed_dim": 64, "depth": 2, "num_heads": 4,
              "init_values": 1.0, "mlp_ratio": 5.5 if swiglu else 4.0}  # fmt: skip
    if swiglu:
        kwargs |= {"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}
    cfg = ModelParams(arch="timm:vit_base_patch16_224", kwargs=kwargs, weights=str(path))
    model = S5CLNet(3, cfg, image_size=28).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        ours = model.encoder.forward_features(x)
        theirs = oracle(pixel_values=x).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", RESNETS)
def test_our_resnet_is_torchvisions_to_the_bit(arch):
    """s5cl.model.resnet against torchvision, the oracle: from one seed the same weights and
    buffers under the same keys, the generator left where torchvision leaves it (what is
    drawn next, the embedder and classifier, is the same too), the same outputs."""
    import subprocess
    import sys

    import torchvision

    assert set(ARCHS) == set(RESNETS)  # config's list, this module's table
    torch.manual_seed(3)
    ours = resnet(arch).eval()
    after_ours = torch.rand(4)
    torch.manual_seed(3)
    theirs = torchvision.models.get_model(arch, weights=None).eval()
    after_theirs = torch.rand(4)
    assert torch.equal(after_ours, after_theirs)
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(reference)
    for key, tensor in reference.items():
        assert torch.equal(mine[key], tensor), key
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    # the point of it: building the default encoder loads neither torchvision nor torch._dynamo
    code = ("import sys; from s5cl.model.backbones import create_encoder; "
            "create_encoder('resnet18', {}, 'model', False); "
            "print(sorted({'torchvision', 'torch._dynamo'} & set(sys.modules)))")  # fmt: skip
    said = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert said.stdout.strip() == "[]"


def test_imagenet_weights_load_into_our_resnet_from_torchs_cache(tmp_path, monkeypatch):
    """model.weights: imagenet reads torchvision's published file through torch.hub's cache,
    which is filled here with random weights under that file's name (no download)."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    torch.manual_seed(5)
    published = torchvision.models.get_model("resnet18", weights=None).state_dict()
    (tmp_path / "hub/checkpoints").mkdir(parents=True)
    torch.save(published, tmp_path / "hub/checkpoints" / url.rsplit("/", 1)[1])
    encoder = backbones.create_encoder("resnet18", {}, "model", imagenet=True)
    loaded = encoder.state_dict()
    assert set(published) - set(loaded) == {"fc.weight", "fc.bias"}
    for key, tensor in loaded.items():
        assert torch.equal(tensor, published[key]), key
