"""Typed configs: nested dataclasses loaded from plain YAML, with ``--set a.b=value`` overrides.

A field typed as a union of dataclasses picks its variant with a ``kind:`` key that matches the class
attribute ``KIND``. Unknown keys and wrong types are UserErrors that name the key and what is allowed,
raised before any work starts.

Values are checked the same way everywhere: a config dataclass may define ``check(self, path)``, which raises
a UserError naming the full key (``path`` is the section's dotted key, "" at the root; build names with
``errors.key_path``). ``from_dict`` (hence ``load_config``) runs ``check_config`` on what it built, so every
out-of-range value is reported at load time, before any work; code that builds configs by hand calls
``check_config`` itself.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from gendistill.errors import UserError, key_path

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. (YAML 1.1 also reads yes/no/on/off as booleans, which would
    turn ``mixed_precision: no`` into False.)"""


_Loader.yaml_implicit_resolvers = {
    key: [r for r in resolvers if r[0] != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
# YAML 1.1 wants a dot in every float, so `--set lr=5e-3` would arrive as the string "5e-3"; YAML 1.2 does not.
_Loader.yaml_implicit_resolvers = {
    key: [r for r in resolvers if r[0] != "tag:yaml.org,2002:float"]
    for key, resolvers in _Loader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build ``cls`` from its defaults, then the YAML file at ``path``, then ``key.sub=value`` overrides."""
    data: dict = {}
    if path is not None:
        data = read_yaml(path)
    for item in overrides or []:
        _apply_override(data, item)
    return from_dict(cls, data)


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, turning a missing file or bad syntax into a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values")
    return data


def save_config(config, path: str | Path) -> None:
    """Write the fully resolved config as YAML (what a run really used)."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def to_dict(config) -> dict:
    """A dataclass config as plain data, with ``kind`` written for variant classes."""
    out = {}
    if hasattr(type(config), "KIND"):
        out["kind"] = type(config).KIND
    for field in dataclasses.fields(config):
        out[field.name] = _plain(getattr(config, field.name))
    return out


def _plain(value):
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _apply_override(data: dict, item: str) -> None:
    if "=" not in item:
        raise UserError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    try:
        value = parse_yaml(raw)
    except yaml.YAMLError:
        value = raw
    node = data
    *parents, leaf = key.strip().split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override {key!r}: {part!r} is a value, not a section")
    if leaf == "kind" and node.get("kind", value) != value:
        node.clear()  # another variant: the file's keys were the old variant's (--set scene.kind=nerf)
    node[leaf] = value


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Convert plain data into dataclass ``cls``, checking every key and type, then every value
    (``check_config``); ``where`` is the dotted key of ``data`` in the messages."""
    config = _build(cls, data, where)
    check_config(config, where)
    return config


def check_config(config, where: str = "") -> None:
    """Call ``check(path)`` on every dataclass in the tree of ``config`` (itself, its fields, and the items of
    its lists and dicts), each with its dotted key path; a section's own check runs before its children's."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        check = getattr(config, "check", None)
        if callable(check):
            check(where)
        for field in dataclasses.fields(config):
            check_config(getattr(config, field.name), key_path(where, field.name))
    elif isinstance(config, dict):
        for key, value in config.items():
            check_config(value, key_path(where, str(key)))
    elif isinstance(config, (list, tuple)):
        for i, value in enumerate(config):
            check_config(value, f"{where}[{i}]")


def _build(cls: type[T], data: dict, where: str) -> T:
    """``cls`` from plain data, every key and type checked (values are ``check_config``'s)."""
    if not isinstance(data, dict):
        raise UserError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    data = {k: v for k, v in data.items() if not (k == "kind" and hasattr(cls, "KIND"))}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = key_path(where, unknown[0])
        raise UserError(f"unknown config key {name!r}; valid keys here: {', '.join(sorted(fields))}")
    values = {name: _convert(hints[name], _with_default_kind(fields[name], data[name]), key_path(where, name))
              for name in data}
    return cls(**values)


def _with_default_kind(field: dataclasses.Field, value):
    """A section given as a mapping is laid over the field's own default (so ``--set trainer.steps=5`` keeps
    the other trainer values the default config chose); a variant without ``kind:`` keeps the default's."""
    if not isinstance(value, dict):
        return value
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    if not dataclasses.is_dataclass(default):
        return value
    kind = getattr(type(default), "KIND", None)
    if "kind" in value and value["kind"] != kind:
        return value
    return _deep_merge(to_dict(default), value)


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _convert(hint, value, where: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return _convert_union(args, value, where)
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, key_path(where, str(k))) for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list, got {value!r}")
        item = args[0] if args else Any
        converted = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    return _convert_scalar(hint, value, where)


def _convert_union(args, value, where: str):
    if value is None and type(None) in args:
        return None
    variants = [a for a in args if dataclasses.is_dataclass(a)]
    if variants and isinstance(value, dict):
        kinds = {a.KIND: a for a in variants if hasattr(a, "KIND")}
        if kinds:
            kind = value.get("kind")
            if kind not in kinds:
                raise UserError(f"{where}.kind must be one of {', '.join(sorted(kinds))}, got {kind!r}")
            return _build(kinds[kind], value, where)
        return _build(variants[0], value, where)
    scalars = [a for a in args if a is not type(None) and not dataclasses.is_dataclass(a)]
    errors = []
    for arg in scalars:
        try:
            return _convert(arg, value, where)
        except UserError as err:
            errors.append(str(err))
    raise UserError(errors[0] if errors else f"{where} has an unsupported value {value!r}")


def _convert_scalar(hint, value, where: str):
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, hint):
        return value
    name = getattr(hint, "__name__", str(hint))
    article = "an" if name[:1] in "aeiou" else "a"
    raise UserError(f"{where} must be {article} {name}, got {value!r}")
