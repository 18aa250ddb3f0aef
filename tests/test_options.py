"""The one option table: pytest options, ini keys, ``AciOptions`` and replay flags come from it and agree."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_aci.option_io import read_options, replay_args
from pytest_aci.options import OPTIONS, AciOptions

ROOT = Path(__file__).resolve().parent.parent


def test_every_flag_the_readme_documents_is_in_the_table_and_every_row_is_documented():
    """Every flag that README.md or a docs page names is in the table, and every row is written about by hand
    somewhere in them: the option reference, generated from the table, is not among these pages."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    documented = set(re.findall(r"--aci-[a-z-]+[a-z]", "".join(p.read_text(encoding="utf-8") for p in pages)))
    flags = {option.flag for option in OPTIONS}
    assert documented <= flags, sorted(documented - flags)
    assert flags <= documented, sorted(flags - documented)


def test_each_row_sets_its_own_field_and_ini_key():
    assert len({o.field for o in OPTIONS}) == len(OPTIONS)
    assert len({o.ini for o in OPTIONS}) == len(OPTIONS)
    assert all(o.flag.startswith("--aci-") and o.ini.startswith("aci_") for o in OPTIONS)


def test_unset_options_keep_the_defaults(pytester):
    options = read_options(pytester.parseconfig())
    assert not options.seed_given
    assert replace(options, seed=0) == AciOptions()


def test_a_replay_command_gives_back_the_same_options(pytester, tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not checked here")
    options = AciOptions(
        model="some/model",
        backend="openai",
        judge="refusal-keywords,markers",
        judge_model="other/judge",
        judge_mode="all",
        judge_threshold=0.25,
        examples=3,
        seed=11,
        seed_given=True,
        max_new_tokens=7,
        mode="score",
        search="targeted",
        redact=True,
        endpoint="http://127.0.0.1:9",
        api_key_env="MY_KEY",
        ca_bundle=str(bundle),
        engine_args={"max_model_len": "2048", "dtype": "float32"},
    )
    args = replay_args(options, "openai")
    assert args[:3] == ["--aci-model=some/model", "--aci-backend=openai", "--aci-seed=11"]
    assert read_options(pytester.parseconfig(*args)) == options


def test_a_replay_command_leaves_out_what_is_the_default():
    assert replay_args(AciOptions(seed=5), "hf") == ["--aci-model=smollm2-135m", "--aci-backend=hf", "--aci-seed=5"]


def test_ini_keys_set_the_same_fields_as_the_flags(pytester):
    pytester.makeini("[pytest]\naci_examples = 4\naci_redact = true\naci_vllm_args =\n    max_model_len=512\n")
    from_ini = read_options(pytester.parseconfig())
    from_flags = read_options(
        pytester.parseconfig("--aci-examples=4", "--aci-redact", "--aci-vllm-arg=max_model_len=512")
    )
    assert from_ini.examples == from_flags.examples == 4
    assert from_ini.redact and from_flags.redact
    assert from_ini.engine_args == from_flags.engine_args == {"max_model_len": "512"}


def test_a_bad_flag_value_names_the_flag(pytester):
    with pytest.raises(pytest.UsageError, match="--aci-examples"):
        pytester.parseconfig("--aci-examples=0")


def test_an_option_that_overrides_a_spec_field_says_so_once_in_the_table_and_for_spec_applies_it():
    from pytest_aci.options import OVERRIDING
    from pytest_aci.spec.schema import Spec

    spec = Spec.model_validate({"name": "s", "prompts": [{"id": "p", "text": "t"}], "checks": ["recovers"]})
    for option in OPTIONS:  # the help says it too, and no option overrides a spec without saying so in the table
        assert ("overriding the specs" in option.help) <= (option.overrides is not None), option.flag
        assert (option.overrides is None) or "spec" in option.help, option.flag
    for field in OVERRIDING:
        value = spec
        for part in field.split("."):
            value = getattr(value, part)  # every field named in the table is the spec's
        assert AciOptions().for_spec(spec, field) == value
    given = AciOptions(defence="header:16", depth_buckets=10, max_new_tokens=7, judge="markers")
    assert given.for_spec(spec, "defence") == "header:16"
    assert given.for_spec(spec, "depth_sample.buckets") == 10
    assert given.for_spec(spec, "depth_sample.per_bucket") == spec.depth_sample.per_bucket
    assert given.for_spec(spec, "continuation.max_new_tokens") == 7
    assert given.for_spec(spec, "judge") == "markers"
