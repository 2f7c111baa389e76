"""Config loading, the one place: TOML presets/files -> nested dataclasses, with `--set key=value` overrides.

Every stage's config is a small dataclass tree. `load_config(cls, preset_or_path, overrides)` reads a TOML
file (a preset name resolves to configs/<kind>/<name>.toml), applies dotted overrides, rejects unknown keys
and wrong types with a one-line message, and returns the dataclass. `to_dict` gives back plain JSON data.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from pathlib import Path

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"


class UserError(Exception):
    """Bad input from the user: the CLI prints it as one line and exits with status 2."""


def preset_path(kind: str, name: str) -> Path:
    """configs/<kind>/<name>.toml; raises UserError naming the available presets."""
    folder = CONFIG_ROOT / kind
    path = folder / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []
        raise UserError(f"unknown {kind} preset {name!r}; allowed: {', '.join(known) or '(none found in ' + str(folder) + ')'}")
    return path


def read_toml(path: str | os.PathLike) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None


def parse_override(text: str) -> tuple[list[str], object]:
    """'render.samples=8' -> (['render', 'samples'], 8); the value is read as TOML, else as a bare string."""
    if "=" not in text:
        raise UserError(f"override {text!r} is not KEY=VALUE (e.g. render.samples=8)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override {text!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(data: dict, overrides: dict | list | None) -> dict:
    """Set dotted keys in a nested dict: overrides is {'a.b': v} or a list of 'a.b=v' strings."""
    if not overrides:
        return data
    items = [parse_override(o) for o in overrides] if isinstance(overrides, list) else \
        [(k.split("."), v) for k, v in overrides.items()]
    for path, value in items:
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"cannot set {'.'.join(path)}: {part!r} is not a section")
        node[path[-1]] = value
    return data


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, where: str):
    """Check (and gently convert) a TOML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a section (table), got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise UserError(f"{where} = {value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"{where} must have {len(args)} items, got {len(value)}: {value!r}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else typing.Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a table, got {value!r}")
        _, vt = typing.get_args(tp) or (str, typing.Any)
        return {str(k): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is typing.Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {tp!r} at {where}")


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass `cls` from a nested dict; unknown keys are an error naming the nearest valid key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            full = f"{where}.{key}" if where else key
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"unknown config key {full!r}{hint}; allowed here: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    obj = cls(**kwargs)
    if hasattr(obj, "validate") and not where:
        obj.validate()
    return obj


def to_dict(obj) -> dict:
    """Dataclass -> plain JSON-able dict (tuples become lists)."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(obj)


def load_config(cls, kind: str, source: str | os.PathLike | None, overrides=None):
    """Load config `cls` from a preset name or a TOML path (None = the class defaults), then overrides.

    `source` is a path when it names an existing file or ends in .toml, otherwise a preset name under
    configs/<kind>/.
    """
    if source is None:
        data = {}
    else:
        src = str(source)
        path = Path(src) if (src.endswith(".toml") or os.path.sep in src or Path(src).is_file()) \
            else preset_path(kind, src)
        data = read_toml(path)
    data = apply_overrides(data, overrides)
    return from_dict(cls, data)
