"""Config loading, the one place: TOML presets/files -> nested dataclasses, with `--set key=value` overrides.

Every stage's config is a small dataclass tree. `load_config(cls, preset_or_path, overrides)` reads a TOML
file (a preset name resolves to datagen/presets/<kind>/<name>.toml, package data that a wheel install ships too),
applies dotted overrides, rejects unknown keys and wrong types with a one-line message, and returns the dataclass.
`to_dict` gives back plain JSON data.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import tomllib
import types
import typing
from pathlib import Path

CONFIG_ROOT = Path(__file__).resolve().parent / "presets"  # package data (pyproject.toml)
MAX_INT = 2**63 - 1          # TOML's integers are 64-bit; anything larger is a typo, and overflows numpy/torch later


class UserError(Exception):
    """Bad input from the user: the CLI prints it as one line and exits with status 2."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, carrying the one line that says what was kept and how to continue (the CLI prints it and
    exits with status 130). Raised by the code that knows the answer: a training loop, the render, the demo."""


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> None:
    """UserError (one line, before any work) when directory `path` cannot be created or written: a file is in the
    way (the path or a folder above it), or the nearest existing folder above it is not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} exists and is not a directory")
    ancestor = path.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{option} {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: {ancestor} is not writable")


# Presets that exist for some kinds only, and the preset the other kinds answer with: demo-textured is the demo's
# dataset on textured ground (datagen/presets/dataset/demo-textured.toml), trained and probed with the demo's
# settings, so `magvit3d demo -c demo-textured` and `train-tokenizer -c demo-textured` work as `-c demo` does;
# 2d-fast is the 2d scene at 48 px, trained and probed with the 2d presets.
PRESET_FALLBACKS = {"demo-textured": "demo", "study": "demo", "2d-fast": "2d"}


def preset_path(kind: str, name: str) -> Path:
    """datagen/presets/<kind>/<name>.toml (or its PRESET_FALLBACKS preset's where the kind has no such file);
    raises UserError naming the available presets."""
    folder = CONFIG_ROOT / kind
    path = folder / f"{name}.toml"
    if not path.is_file() and name in PRESET_FALLBACKS:
        path = folder / f"{PRESET_FALLBACKS[name]}.toml"
    if not path.is_file():
        stems = {p.stem for p in folder.glob("*.toml")} if folder.is_dir() else set()
        known = sorted(stems | {alias for alias, base in PRESET_FALLBACKS.items() if base in stems})
        raise UserError(f"unknown {kind} preset {name!r}; allowed: {', '.join(known) or '(none found in ' + str(folder) + ')'}")
    return path


def read_toml(path: str | os.PathLike) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a directory; expected a TOML file or a preset name") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: not UTF-8 text ({e.reason} at byte {e.start})") \
            from None
    except (OSError, ValueError) as e:  # permission denied, a NUL in the name, ...
        raise UserError(f"cannot read config file {path!r}: {getattr(e, 'strerror', None) or e}") from None


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
    except (tomllib.TOMLDecodeError, ValueError):  # ValueError: an integer of more than 4300 digits
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


def _short(value, limit: int = 60) -> str:
    """repr of a value for a message, cut to `limit` characters."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, where: str):
    """Check (and gently convert) a TOML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a section (table), got {_short(value)}")
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
        raise UserError(errors[0] if errors else f"{where}: bad value {_short(value)}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise UserError(f"{where} = {_short(value)} is not allowed; allowed: {', '.join(map(str, allowed))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list, got {_short(value)}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"{where} must have {len(args)} items, got {len(value)}: {_short(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else typing.Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a table, got {_short(value)}")
        _, vt = typing.get_args(tp) or (str, typing.Any)
        return {str(k): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is typing.Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} must be a number, got {_short(value)}")
        try:
            number = float(value)
        except OverflowError:          # an int beyond float's range
            number = math.inf
        if not math.isfinite(number):  # NaN passes every `x <= 0` check, inf every `x >= 1`
            raise UserError(f"{where} = {_short(value)}: must be a finite number")
        return number
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} must be an integer, got {_short(value)}")
        if abs(value) > MAX_INT:
            raise UserError(f"{where} = {_short(value)}: out of range; allowed: |x| < 2**63")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {_short(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where} must be a string, got {_short(value)}")
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


def _at_default(f: dataclasses.Field, value) -> bool:
    """True for a field marked metadata={"omit_at_default": True} whose value is its default."""
    if not f.metadata.get("omit_at_default"):
        return False
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return value == default


def to_dict(obj) -> dict:
    """Dataclass -> plain JSON-able dict (tuples become lists). A field marked omit_at_default is left out while it
    holds its default: a key added after datasets were made keeps their dataset.json config and config hash (and the
    demo's stage keys) unchanged when it is not used."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)
                    if not _at_default(f, getattr(v, f.name))}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(obj)


def to_toml(obj) -> str:
    """A config dataclass as a TOML document with every key (`magvit3d config show`): each section a [table] (nested
    ones [a.b]), other values inline, so that load_config of the text gives the same config back."""
    lines: list[str] = []

    def table(node, name: str) -> None:
        sections = []
        if name:
            lines.extend(["", f"[{name}]"])
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if dataclasses.is_dataclass(value):
                sections.append((value, f"{name}.{_toml_key(f.name)}" if name else _toml_key(f.name)))
            elif isinstance(value, (list, tuple)) and value and all(dataclasses.is_dataclass(v) for v in value):
                rows = [_toml_value(to_dict(v)) for v in value]   # e.g. the camera rig: one table per line
                lines.append(f"{_toml_key(f.name)} = [\n" + "".join(f"  {r},\n" for r in rows) + "]")
            else:
                lines.append(f"{_toml_key(f.name)} = {_toml_value(to_dict(value))}")
        for child, child_name in sections:
            table(child, child_name)

    table(obj, "")
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_key(key: str) -> str:
    return key if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key) else _toml_string(key)


def _toml_string(text: str) -> str:
    # a JSON string is a TOML basic string, except that TOML also wants DEL escaped
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):   # (config floats are finite; TOML spells the others nan, inf, -inf)
        if math.isfinite(value):
            return repr(value)
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }" \
            if value else "{}"
    raise TypeError(f"no TOML form for {type(value).__name__} {value!r}")


def load_config(cls, kind: str, source: str | os.PathLike | None, overrides=None):
    """Load config `cls` from a preset name or a TOML path (None = the class defaults), then overrides.

    `source` is a path when it names an existing file or ends in .toml, otherwise a preset name under
    datagen/presets/<kind>/.
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
