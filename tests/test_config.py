"""Config files, their string arguments and command-line overrides: good input works, bad input
fails with an error naming the field or variant and what is allowed."""

import glob
import os

import pytest

import launch_helpers
from configs_loader import REPO_ROOT, load_config
from roboalign_jax.config import args as config_args
from roboalign_jax.config import overrides
from roboalign_jax.train import registry


def test_parse_variant_and_keys():
  parse = lambda a: config_args.parse(a, variants=("tiny", "3b", "7b"), steps=100, lr=1e-4, name="x")
  assert parse(None).variant == "tiny"
  assert parse("3b").variant == "3b"
  got = parse("variant=7b,steps=10,lr=1,name=run_a")
  assert (got.variant, got.steps, got.lr, got.name) == ("7b", 10, 1.0, "run_a")
  assert isinstance(got.lr, float)
  got = parse("tiny, steps=5")
  assert (got.variant, got.steps) == ("tiny", 5)


@pytest.mark.parametrize("arg,message", [
    ("huge", r"unknown config variant 'huge'; allowed variants: \['tiny', '3b', '7b'\]"),
    ("variant=huge", "unknown config variant 'huge'"),
    ("tiny,stepz=3", r"unknown config argument 'stepz'; allowed: \['lr', 'name', 'steps', 'variant'\]"),
    ("tiny,steps=ten", "steps='ten' has type str; expected int"),
    ("tiny,steps=1.5", "steps=1.5 has type float; expected int"),
    ("steps=3,tiny", "only the first item may be a bare variant name"),
])
def test_parse_errors(arg, message):
  with pytest.raises(config_args.ConfigArgError, match=message):
    config_args.parse(arg, variants=("tiny", "3b", "7b"), steps=100, lr=1e-4, name="x")


@pytest.mark.parametrize("argv,message", [
    (["--config.train.num_stepz=3"], r"unknown config field 'num_stepz' in config.train; allowed fields: \['log_every', 'num_steps'\]"),
    (["--config.trian.num_steps=3"], r"unknown config field 'trian' in config; allowed fields: \['checkpoint'"),
    (["--config.train=3"], r"is a group, not a value; its fields: \['log_every', 'num_steps'\]"),
    (["--config.train.num_steps=abc"], r"expected a value of type int \(current value 300\)"),
    (["--config.optim.lr=fast"], "expected a value of type float"),
    (["--config.checkpoint.async_save=1"], "expected a value of type bool"),
])
def test_override_errors(argv, message):
  spec = os.path.join(REPO_ROOT, "configs/debug.py:tiny")
  with pytest.raises(overrides.ConfigOverrideError, match=message):
    overrides.check_overrides([f"--config={spec}", *argv])


def test_valid_overrides_pass():
  spec = os.path.join(REPO_ROOT, "configs/debug.py:tiny")
  overrides.check_overrides([f"--config={spec}", "--config.train.num_steps=7", "--config.optim.lr=1",
                             "--config.mesh.fsdp=2", "--config.checkpoint.async_save=False"])


@pytest.mark.parametrize("flags,message", [
    (("--config.train.num_stepz=3",), "unknown config field 'num_stepz' in config.train"),
    (("--config.train.num_steps=abc",), "expected a value of type int"),
])
def test_launcher_rejects_bad_override(tmp_path, flags, message):
  proc = launch_helpers.run("configs/debug.py:tiny", str(tmp_path / "run"), *flags)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert not os.path.exists(tmp_path / "run"), "nothing may be written for a rejected config"


def test_launcher_rejects_unknown_variant(tmp_path):
  proc = launch_helpers.run("configs/debug.py:huge", str(tmp_path / "run"))
  assert proc.returncode != 0
  assert "unknown config variant 'huge'; allowed variants: ['tiny', 'wide']" in proc.stderr


def test_unknown_stage_names_registered_stages():
  with pytest.raises(ValueError, match=r"unknown config.stage 'sfft'; registered stages: \["):
    registry.get_trainer("sfft")


CONFIG_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "*.py")))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_config_documents_its_command_and_builds(path):
  module_doc = open(path).read().split('"""')[1]
  name = os.path.relpath(path, REPO_ROOT)
  assert f"python launch/train.py --config={name}:" in module_doc, f"{name} docstring lacks its command"
  config = load_config(name)
  assert config.stage in registry.TRAINERS


def test_family_variants_are_the_registry_families():
  from roboalign_jax.models import backbone as backbone_lib
  assert set(config_args.FAMILY_VARIANTS) == set(backbone_lib.FAMILIES)
  for name, variants in config_args.FAMILY_VARIANTS.items():
    assert set(variants) == set(backbone_lib.family(name).variants), name


@pytest.mark.parametrize("name,arg,family,remat,dtype", [
    ("configs/sft.py", "8b,family=qwen3_vl", "qwen3_vl", True, "bfloat16"),
    ("configs/sft.py", "tiny,family=qwen3_vl", "qwen3_vl", False, ""),
    ("configs/grpo.py", "8b,family=qwen3_vl", "qwen3_vl", True, "bfloat16"),
    ("configs/grpo.py", "4b,family=qwen3_vl", "qwen3_vl", False, "bfloat16"),
    ("configs/vla.py", "libero,family=qwen3_vl", "qwen3_vl", False, "bfloat16"),
    ("configs/sft.py", "7b", "qwen2_5_vl", True, "bfloat16"),
])
def test_family_argument_selects_the_backbone(name, arg, family, remat, dtype):
  config = load_config(f"{name}:{arg}")
  assert (config.model.family, config.model.remat, config.model.compute_dtype) == (family, remat, dtype)
  assert config.data.model_family == family


@pytest.mark.parametrize("arg,message", [
    ("8b", r"variant '8b' is not a qwen2_5_vl model; qwen2_5_vl variants: \['tiny', '3b', '7b'\]"),
    ("7b,family=qwen3_vl", r"variant '7b' is not a qwen3_vl model; qwen3_vl variants: \['tiny', '2b', '4b', '8b'\]"),
    ("tiny,family=llava", r"unknown config argument family='llava'; allowed: \['qwen2_5_vl', 'qwen3_vl'\]"),
])
def test_family_argument_errors(arg, message):
  with pytest.raises(config_args.ConfigArgError, match=message):
    load_config(f"configs/sft.py:{arg}")
