from pathlib import Path

import pytest
import yaml

from s5cl.config.params import json_schema, load_params, validate
from s5cl.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_project_params_validate():
    params = load_params(ROOT / "params.yaml")
    assert params.data.name == "digits"
    assert params.s5cl.tau_l < params.s5cl.tau_u


def test_set_overrides_are_parsed_as_yaml():
    params = load_params(ROOT / "params.yaml", ["s5cl.tau_u=0.5", "split.labels_per_class=10"])
    assert params.s5cl.tau_u == 0.5
    assert params.split.labels_per_class == 10


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("s5cl.tau_uu=0.5", "unknown parameter s5cl.tau_uu"),
        ("s5cl.tau_u=-1", "s5cl.tau_u = -1"),
        ("warmup.batch_labeled=30", "warmup: batch_labeled=30 must be a multiple of m_per_class=4"),
        ("s5cl.tau_u=0", "s5cl.tau_u = 0: Input should be greater than 0"),
        ("split.label_fraction=1.5", "split.label_fraction = 1.5: Input should be less than or"),
        ("split.test_fraction=0", "split.test_fraction = 0: Input should be greater than 0"),
        ("warmup.lr=.inf", "warmup.lr = inf: Input should be a finite number"),
        ("warmup.steps=2.5", "warmup.steps = 2.5: Input should be a valid integer"),
        ("data.on_bad_image=ignore", "data.on_bad_image = 'ignore': Input should be 'error' or"),
        ("split.label_fraction=0.1", "exactly one of split.labels_per_class"),
        ("data.name=folder", "data.root is required"),
        ("seed=abc", "seed = 'abc'"),
        ("nonsense", "expected section.key=value"),
    ],
)
def test_bad_params_fail_with_one_line_naming_the_key(override, expected):
    with pytest.raises(UserError) as error:
        load_params(ROOT / "params.yaml", [override])
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_inverted_hierarchy_warns():
    with pytest.warns(UserWarning, match="hierarchy is inverted"):
        load_params(ROOT / "params.yaml", ["s5cl.tau_l=0.8"])


def test_params_yaml_sections_match_the_models():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(raw) == set(json_schema()["properties"])


def test_model_defaults_are_the_projects_default_run():
    from s5cl.config.params import Params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(raw) == set(Params.model_fields)  # every section written out
    assert validate(raw).model_dump() == Params().model_dump()


def test_retrain_takes_any_s5cl_key_and_inherits_the_rest():
    """retrain: is tuned in its own section; a key it leaves out is s5cl's, so the default
    run's retrain phase has exactly the s5cl settings it always had."""
    from s5cl.config.phases import phase

    default = load_params(ROOT / "params.yaml")
    retrain = phase("retrain").config(default)
    assert retrain.model_dump() == default.s5cl.model_dump() | {"steps": default.retrain.steps}
    tuned = load_params(ROOT / "params.yaml", ["retrain.lr=0.0005", "retrain.tau_p=0.3"])
    config = phase("retrain").config(tuned)
    assert (config.lr, config.tau_p, config.tau_u) == (0.0005, 0.3, tuned.s5cl.tau_u)
    assert phase("s5cl").config(tuned).lr == default.s5cl.lr  # s5cl itself untouched
    with pytest.raises(UserError, match=r"retrain\.lr = -1: Input should be greater than 0"):
        load_params(ROOT / "params.yaml", ["retrain.lr=-1"])
    with pytest.raises(UserError, match="retrain \\(over s5cl\\): batch_labeled=32 must be a"):
        load_params(ROOT / "params.yaml", ["retrain.m_per_class=5"])
    with pytest.raises(UserError, match=r"unknown parameter retrain\.tau_uu"):
        load_params(ROOT / "params.yaml", ["retrain.tau_uu=0.5"])
