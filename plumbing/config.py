"""Typed configuration: YAML presets fill in dataclasses; unknown or mistyped keys are errors.

Every component has one dataclass (see ``autoencoder.train.AutoencoderRunConfig`` and
``diffusion.train.DiffusionRunConfig``). A YAML file is a mapping of section name -> mapping of keys;
``--set section.key=value`` overrides a single key after the file is read. Values are checked against
the dataclass field types, so ``lr: "fast"`` fails with a message naming ``optim.lr``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

from .errors import UserError

T = TypeVar("T")

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loading, except that ``1e-4`` is the float people mean, not the string YAML 1.1 reads.

    PyYAML's float pattern requires a dot in the mantissa (``1.0e-4``); learning rates written ``1e-4``
    in a preset or in ``--set train.lr=1e-4`` would otherwise fail the type check as strings.
    """


# YAML 1.2 booleans: only true/false. YAML 1.1 also reads yes/no/on/off as booleans, which turned
# `--set train.mixed_precision=no` into False and failed the type check of a string choice.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "tTfF":
    _Loader.yaml_implicit_resolvers.setdefault(_first, []).insert(
        0, ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")))


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_load(text_or_stream):
    return yaml.load(text_or_stream, Loader=_Loader)  # noqa: S506 -- _Loader is a SafeLoader


def resolve_config_path(config: str | os.PathLike, stage: str) -> Path:
    """A config argument is a YAML path, or the name of a preset shipped in ``configs/<stage>/``."""
    path = Path(config)
    if path.is_file():
        return path
    preset = CONFIG_ROOT / stage / f"{path.name.removesuffix('.yaml')}.yaml"
    if not path.suffix and preset.is_file():
        return preset
    presets = sorted(p.stem for p in (CONFIG_ROOT / stage).glob("*.yaml"))
    raise UserError(
        f"config file {str(config)!r} not found; pass a YAML path, one of the {stage} presets: {', '.join(presets)}, "
        f"or --config auto to size one for your data"
    )


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (a small subset of typing); convert ints to floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError as err:
                errors.append(err)
        raise UserError(f"config key {key!r} has value {value!r}, expected {_type_name(tp)}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise UserError(f"config key {key!r} is {value!r}; choose one of {', '.join(map(repr, choices))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {key!r} must be a list, got {value!r}")
        (item_tp, *rest) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key {key!r} must be true or false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"config key {key!r} must be a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"config key {key!r} must be an integer, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"config key {key!r} must be a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if value is None:  # a section whose keys are all commented out
            value = {}
        if not isinstance(value, dict):
            raise UserError(f"config section {key!r} must be a mapping of keys, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping; unknown keys and wrong types raise UserError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"config {prefix.rstrip('.') or 'file'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(
            f"unknown config key {prefix + str(unknown[0])!r}; valid keys here: {', '.join(sorted(fields))}"
        )
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"invalid config {prefix.rstrip('.') or cls.__name__}: {err}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain nested dict (tuples become lists), ready for YAML/JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def parse_overrides(overrides: Iterable[str]) -> dict:
    """``["optim.lr=1e-4", "model.codebook_size=512"]`` -> nested dict, values parsed as YAML scalars."""
    result: dict = {}
    for item in overrides or ():
        if "=" not in item:
            raise UserError(f"--set expects section.key=value, got {item!r}")
        dotted, raw = item.split("=", 1)
        keys = [k for k in dotted.strip().split(".") if k]
        if not keys:
            raise UserError(f"--set expects section.key=value, got {item!r}")
        try:
            value = _yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = result
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r} conflicts with another override of {k!r}")
        node[keys[-1]] = value
    return result


def deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | os.PathLike) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = _yaml_load(fh)
    except FileNotFoundError:
        raise UserError(f"config file {str(path)!r} not found; check the path") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"config file {str(path)!r} is not valid YAML{where}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping of sections, not {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | os.PathLike | None, overrides: Iterable[str] = (), stage: str = "",
                sized: dict | None = None) -> T:
    """Read a YAML preset (path or preset name), apply ``sized`` (``--config auto``'s choices for the data and
    device, a nested dict), then the ``--set`` overrides, and build ``cls``."""
    data = read_yaml(resolve_config_path(path, stage)) if path is not None else {}
    data = deep_merge(data, sized or {})
    data = deep_merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def save_config(obj: Any, path: str | os.PathLike) -> None:
    from .checkpoint import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))


def config_value(config, key: str, default=None):
    """``key`` of a diffusers model (its ``config``), a config object, or a plain dict."""
    if not isinstance(config, dict) and hasattr(config, "config"):  # a model: read its config
        config = config.config
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)
