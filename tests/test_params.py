from pathlib import Path

import pytest
import yaml

from s5cl.errors import UserError
from s5cl.params import json_schema, load_params, validate

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
    from s5cl.params import Params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(raw) == set(Params.model_fields)  # every section written out
    assert validate(raw).model_dump() == Params().model_dump()
