"""Config system: presets, typed validation (errors name the key), ``--set`` overrides, save -> load."""

from __future__ import annotations

import pytest
import yaml

from vqldm.plumbing.config import from_dict, load_config, parse_overrides, save_config, to_dict
from vqldm.plumbing.errors import UserError
from vqldm.plumbing.trainkit import TrainLoopConfig
from vqldm.autoencoder.config import AutoencoderRunConfig, load_autoencoder_config


def write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_tiny_preset_by_name_and_by_path():
    by_name = load_autoencoder_config("tiny")
    by_path = load_autoencoder_config("configs/autoencoder/tiny.yaml")
    assert to_dict(by_name) == to_dict(by_path)
    assert by_name.data.image_size == 16 and by_name.model.block_out_channels == [8, 16]
    assert by_name.train.lr == pytest.approx(1e-3) and isinstance(by_name.train.lr, float)


def test_missing_preset_lists_the_presets():
    with pytest.raises(UserError, match="not found.*tiny") as err:
        load_autoencoder_config("no-such-preset")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text,key",
    [
        ("colour: red\n", "'colour'"),
        ("model:\n  codebook_sizes: 8\n", "'model.codebook_sizes'"),
        ("train:\n  lr: 1e-3\n  learning_rate: 1\n", "'train.learning_rate'"),
    ],
)
def test_unknown_key_is_an_error_naming_the_key(tmp_path, text, key):
    with pytest.raises(UserError, match="unknown config key " + key) as err:
        load_autoencoder_config(write(tmp_path, text))
    assert "valid keys here" in str(err.value)


@pytest.mark.parametrize(
    "text,key,expect",
    [
        ("train:\n  lr: fast\n", "train.lr", "must be a number"),
        ("train:\n  lr: true\n", "train.lr", "must be a number"),
        ("train:\n  max_steps: 1.5\n", "train.max_steps", "must be an integer"),
        ("train:\n  max_steps: '100'\n", "train.max_steps", "must be an integer"),
        ("train:\n  progress: 'yes please'\n", "train.progress", "must be true or false"),
        ("model:\n  block_out_channels: 64\n", "model.block_out_channels", "must be a list"),
        ("model:\n  block_out_channels: [64, wide]\n", "model.block_out_channels[1]", "must be an integer"),
        ("data:\n  fit: stretch\n", "data.fit", "choose one of"),
        ("data:\n  max_images: lots\n", "data.max_images", "expected"),
        ("loss:\n  reconstruction: l3\n", "loss.reconstruction", "choose one of"),
        ("model: 3\n", "model", "must be a mapping"),
    ],
)
def test_wrong_type_is_an_error_naming_the_key(tmp_path, text, key, expect):
    with pytest.raises(UserError) as err:
        load_autoencoder_config(write(tmp_path, text))
    msg = str(err.value)
    assert repr(key) in msg and expect in msg and "\n" not in msg


def test_invalid_values_are_errors_naming_the_key(tmp_path):
    with pytest.raises(UserError, match="data.channels"):
        load_autoencoder_config(write(tmp_path, "data:\n  channels: 2\n"))
    with pytest.raises(UserError, match="train.batch_size"):
        load_autoencoder_config("tiny", ["train.batch_size=0"])
    with pytest.raises(UserError, match="norm_num_groups"):
        load_autoencoder_config("tiny", ["model.norm_num_groups=3"])


def test_not_a_mapping_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="must hold a mapping"):
        load_autoencoder_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(UserError, match="not valid YAML at line [0-9]+; fix the syntax"):
        load_autoencoder_config(write(tmp_path, "train:\n  lr: [1, 2\n"))


def test_empty_file_and_empty_section_give_defaults(tmp_path):
    default = to_dict(AutoencoderRunConfig())
    assert to_dict(load_autoencoder_config(write(tmp_path, ""))) == default
    assert to_dict(load_autoencoder_config(write(tmp_path, "train:\n# lr: 1.0\n"))) == default


def test_set_overrides():
    cfg = load_autoencoder_config("tiny", [
        "train.lr=1e-4",  # YAML 1.1 reads this as a string; vqldm reads the float people mean
        "train.max_steps=7",
        "model.block_out_channels=[8, 16, 16]",
        "data.max_images=null",
        "data.fit=pad",
        "train.grad_clip=2",  # int -> float
        "quantizer.restart_dead_codes=false",
    ])
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps == 7 and cfg.model.block_out_channels == [8, 16, 16]
    assert cfg.data.max_images is None and cfg.data.fit == "pad"
    assert cfg.train.grad_clip == 2.0 and isinstance(cfg.train.grad_clip, float)
    assert cfg.quantizer.restart_dead_codes is False
    assert cfg.model.codebook_size == 32  # untouched keys keep the preset's values


def test_set_errors():
    with pytest.raises(UserError, match="unknown config key 'train.speed'"):
        load_autoencoder_config("tiny", ["train.speed=3"])
    with pytest.raises(UserError, match="'train.lr'"):
        load_autoencoder_config("tiny", ["train.lr=fast"])
    with pytest.raises(UserError, match="expects section.key=value"):
        parse_overrides(["train.lr"])
    with pytest.raises(UserError, match="expects section.key=value"):
        parse_overrides(["=3"])
    with pytest.raises(UserError, match="conflicts"):
        parse_overrides(["train=3", "train.lr=1"])
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}


def test_save_then_load_round_trips(tmp_path):
    cfg = load_autoencoder_config("tiny", ["train.lr=3e-4", "data.max_images=100"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(AutoencoderRunConfig, tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["lr"] == pytest.approx(3e-4)


def test_from_dict_directly():
    cfg = from_dict(AutoencoderRunConfig, {"train": {"lr": 1}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    with pytest.raises(UserError, match="'quantizer.beta'"):
        from_dict(AutoencoderRunConfig, {"quantizer": {"beta": "big"}})


def test_learning_rate_schedules():
    from vqldm.plumbing.trainkit import lr_lambda

    const = lr_lambda(10)
    assert const(0) == pytest.approx(0.1) and const(9) == 1.0 and const(500) == 1.0
    cos = lr_lambda(10, "cosine", max_steps=110, min_ratio=0.1)
    assert cos(4) == pytest.approx(0.5)  # warm-up is shared
    assert cos(10) == pytest.approx(1.0)
    assert cos(60) == pytest.approx(0.55)  # half way: mean of 1 and min_ratio
    assert cos(110) == pytest.approx(0.1) and cos(10_000) == pytest.approx(0.1)
    values = [cos(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_bad_lr_schedule_is_rejected():
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainLoopConfig(lr_schedule="linear")


def test_yaml_words_no_yes_on_off_stay_strings():
    """YAML 1.1 reads no/yes/on/off as booleans; `--set train.mixed_precision=no` must mean the string "no"."""
    cfg = load_autoencoder_config("tiny", ["train.mixed_precision=no"])
    assert cfg.train.mixed_precision == "no"
    assert parse_overrides(["a.b=off", "a.c=true", "a.d=False", "a.e=1e-4"]) == {"a": {"b": "off", "c": True, "d": False, "e": 1e-4}}
    with pytest.raises(UserError, match="must be true or false"):
        load_autoencoder_config("tiny", ["train.progress=yes"])
