"""Property-based fuzzing of the magvit3d command line and of the config loader (hypothesis).

The contract under test (datagen/cli.py): every invocation either runs (or starts a valid job) or exits with status
2 and ONE line `magvit3d: error: ...` on stderr, writes nothing, and never shows a traceback.

- The config loader gets random TOML files (random keys, real keys with values of random types, nested tables,
  dates, NaN/inf, huge ints, broken syntax) and random `--set KEY=VALUE` overrides, for every config kind: it returns
  a config or raises a one-line UserError.
- Every subcommand (listed from the CLI itself) gets random option values generated from its click parameters:
  paths from a pool (missing, empty dir, a file, broken JSON, an unpacked and a packed fake dataset, a generated
  dir, relative and `..` paths, random text), random ints/floats/strings, choices and junk, missing required options,
  unknown options. The jobs that would be long (Blender render, the three training loops) are stubbed at the point
  where the work starts, so a valid case costs milliseconds; invalid ones take the real code path. Runs go through
  `datagen.cli.main` in-process (the console-script entry point itself, which is where exceptions become exit
  codes), with cwd and HOME set to empty directories that must stay empty.
- A few real subprocess runs of the installed `magvit3d` script confirm the in-process results.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import json
import math
import os
import re
import shutil
import string
import subprocess
import sys
import typing
from pathlib import Path

import click
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from datagen.cli import cli as root_group
from datagen.cli import main
from datagen.config import CONFIG_ROOT, UserError, from_dict, load_config, to_dict
from datagen.pack import load_packed, pack_dataset
from fakes import make_fake_dataset

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "magvit3d"

# MAGVIT3D_FUZZ_EXAMPLES=500 explores further, MAGVIT3D_FUZZ_RANDOM=1 with other examples each run (the suite keeps
# the run short and deterministic)
FUZZ = settings(max_examples=int(os.environ.get("MAGVIT3D_FUZZ_EXAMPLES", 40)), deadline=None,
                derandomize=not os.environ.get("MAGVIT3D_FUZZ_RANDOM"), database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])
ERROR_LINE = re.compile(r"^magvit3d: error: \S.*$")


# ---------------------------------------------------------------------------------------------------------------------
# the config classes and their keys

def config_classes():
    from datagen.spec import DatasetConfig
    from evaluation.probe import ProbeRunConfig
    from training.train_tokenizer import TokenizerRunConfig
    from training.train_transformer import TransformerRunConfig

    return {"dataset": DatasetConfig, "tokenizer": TokenizerRunConfig, "transformer": TransformerRunConfig,
            "probe": ProbeRunConfig}


CLASSES = config_classes()


def leaf_fields(cls, prefix=()) -> list[tuple[tuple[str, ...], object]]:
    """Every (dotted path, type) of a config dataclass tree, sections included."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        out.append((prefix + (f.name,), tp))
        if dataclasses.is_dataclass(tp):
            out += leaf_fields(tp, prefix + (f.name,))
    return out


def known_values(kind: str) -> dict[tuple[str, ...], list]:
    """Per key path, the values the class default and the presets use: plausible values to mutate around."""
    seen: dict[tuple[str, ...], list] = {}

    def walk(d, prefix=()):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, prefix + (k,))
            seen.setdefault(prefix + (k,), []).append(v)
    walk(to_dict(CLASSES[kind]()))
    import tomllib

    for p in sorted((CONFIG_ROOT / kind).glob("*.toml")):
        walk(tomllib.loads(p.read_text()))
    return seen


FIELDS = {kind: leaf_fields(cls) for kind, cls in CLASSES.items()}
KNOWN = {kind: known_values(kind) for kind in CLASSES}


# ---------------------------------------------------------------------------------------------------------------------
# strategies: TOML values, documents, overrides

safe_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
junk_key = st.one_of(st.text(string.ascii_letters + "_-", min_size=1, max_size=8), safe_text.filter(bool))
scalars = st.one_of(
    st.integers(-3, 40), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2.0, 2.0), st.booleans(), safe_text, st.sampled_from(["cube", "linear", "vq", "cpu", "cycles", ""]),
    st.datetimes(min_value=datetime.datetime(1900, 1, 1), max_value=datetime.datetime(2100, 1, 1)),
    st.dates(min_value=datetime.date(1900, 1, 1), max_value=datetime.date(2100, 1, 1)))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(junk_key, inner, max_size=3)), max_leaves=6)


def mutate(v):
    """Values near a known one: the value itself, an element changed, a type swapped."""
    if isinstance(v, bool):
        return st.sampled_from([v, not v, int(v), str(v).lower()])
    if isinstance(v, int):
        return st.sampled_from([v, 0, -v, v + 1, v * 1000, float(v), str(v)])
    if isinstance(v, float):
        return st.sampled_from([v, 0.0, -v, v * 1e6, math.nan, math.inf, int(v)])
    if isinstance(v, list):
        return st.one_of(st.just(v), st.just(v[:-1]), st.just(v + v[:1]), st.just([]),
                         st.lists(scalars, max_size=len(v) + 1))
    if isinstance(v, dict):
        return st.one_of(st.just(v), st.dictionaries(junk_key, scalars, max_size=2))
    return st.one_of(st.just(v), safe_text)


@st.composite
def key_value(draw, kind: str):
    """(key path, value): a real key with a plausible or random value, or a random key."""
    choice = draw(st.integers(0, 9))
    if choice <= 6:
        path, _ = draw(st.sampled_from(FIELDS[kind]))
        near = KNOWN[kind].get(path)
        value = draw(st.one_of(st.sampled_from(near).flatmap(mutate), values) if near else values)
    elif choice <= 8:
        path = (draw(st.sampled_from([p[0] for p, _ in FIELDS[kind]])), draw(junk_key))
        value = draw(values)
    else:
        path = tuple(draw(st.lists(junk_key, min_size=1, max_size=3)))
        value = draw(values)
    return path, value


def toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else toml_str(k)


def toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=True).replace("\x7f", "\\u007f")


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, (datetime.datetime, datetime.date)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def nest(pairs) -> dict:
    doc: dict = {}
    for path, value in pairs:
        node = doc
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = value
    return doc


def toml_document(doc: dict) -> str:
    top = [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    sections = [f"[{toml_key(k)}]\n" + "\n".join(f"{toml_key(kk)} = {toml_value(vv)}" for kk, vv in v.items())
                for k, v in doc.items() if isinstance(v, dict)]
    return "\n".join(top + sections) + "\n"


@st.composite
def toml_text(draw, kind: str):
    """A TOML file: mostly well-formed with random keys and values, sometimes a preset with a line changed, sometimes
    random bytes."""
    how = draw(st.integers(0, 9))
    if how <= 6:
        return toml_document(nest(draw(st.lists(key_value(kind), max_size=6))))
    if how <= 8:
        preset = (CONFIG_ROOT / kind / f"{draw(st.sampled_from(['tiny', 'demo', 'full']))}.toml").read_text()
        lines = preset.splitlines()
        (path, value) = draw(key_value(kind))
        i = draw(st.integers(0, len(lines)))
        return "\n".join(lines[:i] + [f"{toml_key(path[-1])} = {toml_value(value)}"] + lines[i:]) + "\n"
    return draw(st.one_of(safe_text, st.binary(max_size=40).map(lambda b: b.decode("latin-1"))))


@st.composite
def override(draw, kind: str):
    """A `--set` argument: KEY=VALUE with a real or random key and a TOML or raw value, or something malformed."""
    how = draw(st.integers(0, 9))
    if how <= 6:
        path, value = draw(key_value(kind))
        raw = toml_value(value) if draw(st.booleans()) else draw(safe_text)
        return ".".join(path) + "=" + raw
    return draw(st.one_of(safe_text, st.sampled_from(["=", "=1", "a.=1", ".a=1", "a..b=2", "render", "render.=x",
                                                      "render.samples", "render.samples==1", " = "])))


# ---------------------------------------------------------------------------------------------------------------------
# the config loader

def check_user_error(e: UserError) -> None:
    msg = str(e)
    assert msg.strip() and "\n" not in msg and "Traceback" not in msg, repr(msg)


@pytest.mark.parametrize("kind", sorted(CLASSES))
@FUZZ
@given(data=st.data())
def test_config_loader_returns_a_config_or_a_one_line_user_error(kind, data, tmp_path_factory):
    """A random TOML file plus random overrides: a valid config (which survives to_dict and JSON) or UserError."""
    text = data.draw(toml_text(kind), label="toml")
    sets = data.draw(st.lists(override(kind), max_size=3), label="overrides")
    path = tmp_path_factory.getbasetemp() / f"fuzz-{kind}.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass") if data.draw(st.booleans()) else
                     text.encode("latin-1", "replace"))
    try:
        cfg = load_config(CLASSES[kind], kind, path, sets)
    except UserError as e:
        check_user_error(e)
        return
    assert isinstance(cfg, CLASSES[kind])
    # runs save the config as JSON next to their checkpoints and rebuild it from there: strict JSON (no NaN/inf)
    # that loads back to the same config
    saved = json.loads(json.dumps(to_dict(cfg), allow_nan=False))
    assert from_dict(CLASSES[kind], saved) == cfg


@pytest.mark.parametrize("source", ["{tmp}", "{tmp}/x.toml", "{tmp}/dir.toml", "{tmp}/latin1.toml",
                                    "{tmp}/locked.toml", "../../etc/passwd", "nope", "", "tiny/../demo", "\x00"])
def test_config_sources_that_are_not_readable_toml(tmp_path, source):
    """Directories, missing, unreadable and non-UTF-8 files, preset names that are paths: one-line UserError."""
    (tmp_path / "dir.toml").mkdir()
    (tmp_path / "latin1.toml").write_bytes(b"[render]\nengine = \"\xe9\"\n")
    (tmp_path / "locked.toml").write_text("[render]\n")
    (tmp_path / "locked.toml").chmod(0)
    if "locked" in source and os.geteuid() == 0:
        pytest.skip("root reads a file without read permission")
    for kind, cls in CLASSES.items():
        with pytest.raises(UserError) as e:
            load_config(cls, kind, source.format(tmp=tmp_path), [])
        check_user_error(e.value)
        assert str(e.value).startswith(("config file", "cannot read config file", "unknown"))


@pytest.mark.parametrize("value,needle", [("nan", "finite"), ("inf", "finite"), ("-inf", "finite")])
def test_non_finite_floats_are_rejected(value, needle):
    for kind, key in (("dataset", "trajectories.gravity"), ("tokenizer", "train.lr"), ("transformer", "train.lr"),
                      ("probe", "train.lr")):
        with pytest.raises(UserError, match=needle) as e:
            load_config(CLASSES[kind], kind, "tiny", [f"{key}={value}"])
        assert key in str(e.value)


# ---------------------------------------------------------------------------------------------------------------------
# the command line, in-process

class StartedJob(Exception):
    """Raised by the stubs at the point where a valid job would start its long work."""


def started_in(function_name: str, real):
    """A stand-in for `real` that raises StartedJob when called from `function_name` (where a training builds its
    model, after every check), and is `real` everywhere else (e.g. load_probe building the same model class)."""
    def stub(*args, **kwargs):
        if function_name is None or sys._getframe(1).f_code.co_name == function_name:
            raise StartedJob
        return real(*args, **kwargs)
    return stub


# where each long job starts its work
STUBS = [("datagen.render", "render_dataset", None), ("training.train_tokenizer", "VideoTokenizer", "train_tokenizer"),
         ("training.train_transformer", "MaskedVideoTransformer", "train_transformer"),
         ("evaluation.probe", "ProbeNet", "train_probe")]


@pytest.fixture(scope="module")
def stubbed(templates):
    import importlib

    with pytest.MonkeyPatch.context() as mp:
        for module, attr, caller in STUBS:
            mod = importlib.import_module(module)
            mp.setattr(mod, attr, started_in(caller, getattr(mod, attr)))
        yield mp


ONE_STEP = ["train.steps=1", "train.val_every=1", "train.ckpt_every=1", "train.warmup_steps=0"]


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """Input trees copied into each example's scratch dir (commands may legitimately change their inputs): fake
    datasets, and one-step tokenizer (with its token cache), transformer and probe runs, so that every command has
    a valid case."""
    from evaluation.probe import load_run_config as probe_config, train_probe
    from training.generated import ClipRecord, write_generated
    from training.loop import pick_device
    from training.tokenize import tokenize_dataset
    from training.train_tokenizer import load_run_config as tokenizer_config, train_tokenizer
    from training.train_transformer import load_run_config as transformer_config, train_transformer

    root = tmp_path_factory.mktemp("templates")
    make_fake_dataset(root / "unpacked", num_samples=4, resolution=32, frames=4)
    packed = make_fake_dataset(root / "packed", num_samples=4, resolution=32, frames=4)
    pack_dataset(packed, progress=False)
    quiet = dict(progress=False, log=lambda m: None)
    train_tokenizer(tokenizer_config("tiny", ONE_STEP + ["train.batch_size=2", "train.val_clips=1"]), packed,
                    root / "tokenizer", device="cpu", **quiet)
    tokenize_dataset(root / "tokenizer", packed, device=pick_device("cpu"), progress=False)
    train_transformer(transformer_config("tiny", ONE_STEP + ["train.batch_size=1", "train.val_clips=1"]),
                      root / "tokenizer", root / "transformer", device="cpu", **quiet)
    train_probe(probe_config("tiny", ONE_STEP + ["train.val_frames=4"]), packed, root / "probe", device="cpu", **quiet)
    test = load_packed(packed, "test")
    recs = [ClipRecord(int(s), "predict", test.index["labels"]["shape"][k], test.index["labels"]["family"][k], k,
                       given_frames=2) for k, s in enumerate(test.sample_ids)]
    write_generated(root / "gen", np.array(test.rgb), recs,
                    {"task": "predict", "split": "test", "dataset_config_hash": test.index["config_hash"]},
                    target=np.array(test.rgb))
    (root / "empty").mkdir()
    (root / "a_file.txt").write_text("not a directory\n")
    (root / "badjson").mkdir()
    (root / "badjson" / "dataset.json").write_text("{not json")
    (root / "badjson" / "generated.json").write_text("[1, 2]")
    (root / "listjson").mkdir()
    (root / "listjson" / "dataset.json").write_text("[]")
    (root / "cfg.toml").write_text("[render]\nsamples = 2\n")
    (root / "bad.toml").write_text("[render\nsamples = ")
    return root


POOL = ["missing", "empty", "a_file.txt", "badjson", "listjson", "unpacked", "packed", "gen", "cfg.toml", "bad.toml",
        "a_file.txt/below", "missing/deeper/still", "empty/../missing2", "tokenizer", "tokenizer/tokens", "transformer",
        "probe"]
RELATIVE = ["rel", "rel/out", "..", "."]     # relative to the (empty) cwd


@st.composite
def path_value(draw):
    how = draw(st.integers(0, 9))
    if how <= 2:   # the inputs that can make a valid case
        return "{S}/" + draw(st.sampled_from(["packed", "gen", "unpacked", "fresh"]))
    if how <= 6:
        return "{S}/" + draw(st.sampled_from(POOL))
    if how == 7:
        return draw(st.sampled_from(RELATIVE))
    return draw(safe_text.filter(lambda s: s.strip() and not s.startswith("-")))


def option_value(draw, param: click.Parameter, command: str):
    name = param.name
    t = param.type
    junk = safe_text
    if isinstance(t, click.Path):
        return draw(path_value())
    if name == "overrides":
        kind = {"render": "dataset", "train-tokenizer": "tokenizer", "train-transformer": "transformer",
                "train-probe": "probe"}.get(command)
        if kind is None:   # demo: KIND.KEY=VALUE
            kind = draw(st.sampled_from(sorted(CLASSES)))
            return draw(st.one_of(override(kind).map(lambda s, k=kind: f"{k}.{s}"), override(kind)))
        return draw(override(kind))
    if name == "config":
        return draw(st.one_of(st.sampled_from(["tiny", "demo", "full", "huge", "{S}/cfg.toml", "{S}/bad.toml",
                                               "{S}/empty", "{S}/missing.toml"]), junk))
    if name == "device":   # (before the Choice case: the words that are accepted without being shown, too)
        return draw(st.one_of(st.sampled_from(["auto", "cpu", "cuda", "mps", "gpu", "cuda:0", "tpu"]), junk))
    if isinstance(t, click.Choice):
        return draw(st.one_of(st.sampled_from(list(t.choices)), junk))
    if isinstance(t, (click.types.IntParamType, click.IntRange)):
        return draw(st.one_of(st.integers(-3, 12).map(str), st.integers(-2**70, 2**70).map(str),
                              st.sampled_from(["1.5", "x", "", "0x10", "1e3", "nan"])))
    if isinstance(t, click.types.FloatParamType):
        return draw(st.one_of(st.floats(-5, 5).map(repr), st.sampled_from(["nan", "inf", "-inf", "1e400", "x", ""])))
    if name == "split":
        return draw(st.one_of(st.sampled_from(["train", "val", "test", "../test", "nope"]), junk))
    if name == "shard":
        return draw(st.one_of(st.sampled_from(["0/1", "1/2", "2/2", "-1/2", "0/0", "1/x", "a/b/c"]), junk))
    if name == "shapes":
        return draw(st.one_of(st.sampled_from(["cube", "cone", "cylinder", "sphere"]), junk))
    if name == "families":
        return draw(st.one_of(st.sampled_from(["linear", "circular", "helical", "parabolic", "zigzag"]), junk))
    return draw(junk)


def command_names(group=root_group, prefix=()) -> list[str]:
    """Every command, a group's subcommands as 'group sub' (e.g. 'config show')."""
    names = []
    for name in group.list_commands(click.Context(group)):
        cmd = group.get_command(click.Context(group), name)
        names += command_names(cmd, prefix + (name,)) if isinstance(cmd, click.Group) else [" ".join(prefix + (name,))]
    return names


def command_object(command: str) -> click.Command:
    cmd = root_group
    for part in command.split():
        cmd = cmd.get_command(click.Context(cmd), part)
    return cmd


COMMANDS = sorted(command_names())


# per command a valid invocation on the templates; the fuzz mutates it (or builds one from scratch)
BASE = {
    "render": ["--out", "{S}/fresh", "-c", "tiny", "--no-progress"],
    "verify": ["--data", "{S}/unpacked", "--no-progress"],
    "pack": ["--data", "{S}/unpacked", "--no-progress"],
    "preview": ["--data", "{S}/unpacked", "--sample", "1", "--out", "{S}/fresh/p"],
    "train-tokenizer": ["--data", "{S}/packed", "--out", "{S}/fresh", "-c", "tiny", "--device", "cpu", "--no-progress"],
    "tokenize": ["--run", "{S}/tokenizer", "--data", "{S}/packed", "--device", "cpu", "--no-progress"],
    "reconstruct": ["--run", "{S}/tokenizer", "--data", "{S}/packed", "--out", "{S}/fresh", "--device", "cpu"],
    "train-transformer": ["--tokens", "{S}/tokenizer", "--out", "{S}/fresh", "-c", "tiny", "--device", "cpu",
                          "--set", "train.batch_size=1", "--no-progress"],
    "generate": ["--transformer", "{S}/transformer", "--task", "predict", "--out", "{S}/fresh", "--steps", "2",
                 "--device", "cpu", "--no-progress"],
    "train-probe": ["--data", "{S}/packed", "--out", "{S}/fresh", "-c", "tiny", "--device", "cpu", "--no-progress"],
    "evaluate": ["--data", "{S}/packed", "--generated", "{S}/gen", "--probe", "{S}/probe", "--out", "{S}/fresh",
                 "-n", "1", "--no-progress"],
    "compare": ["{S}/gen", "{S}/packed", "--out", "{S}/fresh", "-n", "1"],
    "demo": ["-c", "tiny", "--out", "{S}/fresh", "--device", "cpu", "--no-progress"],
    "config show": ["dataset", "-c", "tiny"],
}


@st.composite
def argv_for(draw, command: str):
    """Either the command's valid invocation with 0-3 mutations (a value replaced by a random one, an option added,
    a token dropped, a junk token inserted), or an invocation built from random choices for every parameter."""
    if draw(st.integers(0, 9)) < 6:
        return command.split() + draw(mutated(command))
    return draw(random_argv(command))


@st.composite
def mutated(draw, command: str):
    cmd = command_object(command)
    options = {opt: p for p in cmd.params if isinstance(p, click.Option) for opt in p.opts}
    arguments = [p for p in cmd.params if isinstance(p, click.Argument)]
    args = list(BASE[command])
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.integers(0, 3))
        if how == 0 and args:   # replace a value
            i = draw(st.integers(0, len(args) - 1))
            param = options.get(args[i - 1]) if i else None
            if param is not None and not param.is_flag:
                args[i] = option_value(draw, param, command)
            elif args[i] not in options and arguments:
                args[i] = option_value(draw, arguments[0], command)
        elif how == 1:          # add an option (possibly again)
            param = draw(st.sampled_from([p for p in cmd.params if isinstance(p, click.Option)]))
            opt = param.opts[0]
            args += [opt] if param.is_flag else [opt, option_value(draw, param, command)]
        elif how == 2 and args:  # drop a token
            del args[draw(st.integers(0, len(args) - 1))]
        else:                   # insert junk
            args.insert(draw(st.integers(0, len(args))), draw(st.one_of(
                safe_text, st.sampled_from(["--frobnicate", "--", "-", "--set", "-h", "--out"]))))
    return args


@st.composite
def random_argv(draw, command: str):
    cmd = command_object(command)
    args = command.split()
    for param in cmd.params:
        if isinstance(param, click.Argument):
            if draw(st.integers(0, 9)) > 0:
                args.append(option_value(draw, param, command))
            continue
        if param.name in ("help", "version"):
            continue
        opt = draw(st.sampled_from(param.opts))
        p_use = 0.9 if param.required else 0.4
        if not draw(st.floats(0, 1)) < p_use:
            continue
        if param.is_flag:
            args.append(opt)
            continue
        for _ in range(draw(st.integers(1, 3)) if param.multiple else 1):
            args += [opt, option_value(draw, param, command)]
    extra = draw(st.integers(0, 19))
    if extra == 0:
        args.append(draw(st.sampled_from(["--frobnicate", "--set", "extra-positional", "-x", "--out"])))
    elif extra == 1:
        args.insert(draw(st.integers(1, len(args))), draw(safe_text))
    return args


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in root.rglob("*") if not p.is_symlink()}


@contextlib.contextmanager
def isolated(home: Path, cwd: Path):
    """Run with HOME, the cwd and the cache/config dirs pointing at empty directories."""
    old = os.getcwd()
    env = {k: os.environ.get(k) for k in ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MAGVIT3D_DEBUG")}
    os.environ["HOME"] = str(home)
    for k in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        os.environ.pop(k, None)
    os.environ["MAGVIT3D_DEBUG"] = "1"    # an unexpected exception propagates, traceback and all, into the test
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(old)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def invoke(argv: list[str]) -> tuple[object, str, str]:
    """datagen.cli.main in-process: (exit code or 'started', stdout, stderr). Any other exception escapes."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except StartedJob:
            code = "started"
    return code, out.getvalue(), err.getvalue()


def check_outcome(command: str, argv: list[str], code, out: str, err: str) -> None:
    what = f"argv={argv!r}\nexit={code!r}\nstdout={out[-2000:]!r}\nstderr={err[-2000:]!r}"
    assert "Traceback" not in err and "Traceback" not in out, what
    if code == 2:
        lines = err.strip("\n").splitlines()
        assert len(lines) == 1 and ERROR_LINE.match(lines[0]), what
    elif code == 1:
        # `verify` exits 1 when the dataset has problems (after listing them); nothing else may
        assert command == "verify" and "verify failed" in err, what
    else:
        assert code in (0, "started"), what


def fuzz_command(command, data, templates, tmp_path_factory):
    import tempfile

    argv = data.draw(argv_for(command), label="argv")
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as folder:   # removed at once: no
        run_case(command, argv, templates, Path(folder))                           # thousands of dirs left


def run_case(command, argv, templates, folder: Path):
    scratch, home, cwd = folder / "s", folder / "home", folder / "cwd"
    for p in (scratch, home, cwd):
        p.mkdir()
    used = {m for a in argv for m in re.findall(r"\{S\}/([^/]+)", a)}
    for name in used & {p.name for p in templates.iterdir()}:   # copy only the inputs this case names
        p = templates / name
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, scratch / name)
    argv = [a.replace("{S}", str(scratch)) for a in argv]
    before = snapshot(scratch)
    with isolated(home, cwd):
        code, out, err = invoke(argv)
    event(f"exit {code}")
    check_outcome(command, argv, code, out, err)
    what = f"argv={argv!r} exit={code!r} stderr={err[-500:]!r}"
    assert not list(home.iterdir()), f"wrote into HOME: {list(home.rglob('*'))}; {what}"
    if code == 2:
        assert snapshot(scratch) == before, f"an invocation that failed changed files; {what}"
        assert not list(cwd.iterdir()), f"an invocation that failed wrote into the cwd; {what}"
    return code


@pytest.mark.parametrize("command", COMMANDS)
@FUZZ
@given(data=st.data())
def test_every_command_runs_or_exits_2_with_one_line(command, data, templates, stubbed, tmp_path_factory):
    fuzz_command(command, data, templates, tmp_path_factory)


# bad inputs the fuzz found (or that are too rare for it to hit reliably), each pinned: (argv, text in the message)
KNOWN_BAD = [
    (["render", "--out", "{S}/fresh", "--config", "{S}/empty"], "is a directory"),
    (["render", "--out", "{S}/fresh", "--config", "{S}/latin1.toml"], "not UTF-8"),
    (["render", "{S}/fresh", "-c", "tiny", "--set", "trajectories.gravity=nan"], "finite"),   # the old positional
    (["render", "--out", "{S}/fresh", "-c", "tiny", "--set", "render.samples=99999999999999999999"], "render.samples"),
    (["train-tokenizer", "--data", "{S}/packed", "--out", "{S}/fresh", "--set", "train.lr=inf"], "finite"),
    (["train-tokenizer", "--data", "{S}/packed", "--out", "{S}/fresh", "--set", "model.norm_groups=0"],
     "norm_groups"),
    (["train-transformer", "--tokens", "{S}/tokenizer", "--out", "{S}/fresh", "--set", "train.lr=nan"], "finite"),
    (["train-probe", "--data", "{S}/packed", "--out", "{S}/fresh", "--set", "train.lr=-inf"], "finite"),
    (["verify", "--data", "{S}/unpacked", "--tolerance", "nan"], "--tolerance"),
    (["verify", "--data", "{S}/unpacked", "--tolerance", "-1"], "--tolerance"),
    (["verify", "--data", "{S}/listjson"], "not a JSON object"),
    (["pack", "--data", "{S}/listjson"], "not a JSON object"),
    (["pack", "{S}/listjson"], "not a JSON object"),
    (["preview", "--data", "{S}/unpacked", "--sample", "1", "--scale", "100000000"], "--scale"),
    (["preview", "--data", "{S}/unpacked", "--sample", "1", "--out", ".."], "--out"),
    (["preview", "--data", "{S}/unpacked", "--sample", "1", "--out", "{S}/empty"], "--out"),
    (["tokenize", "--run", "{S}/tokenizer", "--data", "{S}/packed", "--device", "mps"], "mps"),
    (["demo", "-c", "tiny", "--out", "{S}/a_file.txt/below"], "is a file, not a directory"),
    (["demo", "--preset", "tiny", "--workdir", "{S}/a_file.txt/below"], "is a file, not a directory"),
    (["render", "--out", "{S}/a_file.txt/below", "-c", "tiny"], "is a file, not a directory"),
    (["train-probe", "--data", "{S}/packed", "--out", "{S}/a_file.txt/below"], "is a file, not a directory"),
    (["reconstruct", "--run", "{S}/tokenizer", "--data", "{S}/packed", "--out", "{S}/a_file.txt/below"],
     "is a file, not a directory"),
    (["evaluate", "--data", "{S}/packed", "--generated", "{S}/gen", "--probe", "{S}/probe", "--out",
      "{S}/a_file.txt/below"], "is a file, not a directory"),
    (["generate", "--transformer", "{S}/transformer", "--task", "predict", "--out", "{S}/fresh", "--device", "mps"],
     "mps"),
    (["generate", "--transformer", "{S}/transformer", "--task", "predict", "--out", "{S}/fresh", "--temperature",
      "nan"], "--temperature"),
    (["generate", "--transformer", "{S}/transformer", "--task", "predict", "--out", "{S}/fresh",
      "--choice-temperature", "-5"], "--choice-temperature"),
    (["generate", "--transformer", "{S}/transformer", "--task", "predict", "--out", "{S}/fresh", "--seed",
      "99999999999999999999"], "--seed"),
    (["generate", "--transformer", "{S}/transformer", "--task", "predict", "--out", "{S}/fresh", "--steps",
      "100000000000000000000"], "--steps"),
    (["generate", "--transformer", "{S}/transformer", "--task", "generate", "--out", "{S}/fresh", "--num",
      "99999999999"], "--num"),
    (["generate", "--transformer", "{S}/tokenizer", "--task", "predict", "--out", "{S}/fresh"],
     "is a 'tokenizer' run, not a transformer run"),
    (["config", "show", "dataset", "-c", "{S}/bad.toml"], "not valid TOML"),
    (["compare", "{S}/badjson", "{S}/packed", "--out", "{S}/fresh"], "not a JSON object"),
    (["compare", "{S}/gen", "{S}/packed", "--out", "{S}/fresh", "--split", "../packed/test"], "--split"),
    (["compare", "{S}/gen", "{S}/packed", "--out", "{S}/packed"], "an input of this command"),
    (["compare", "{S}/gen", "{S}/packed", "--out", "{S}"], "an input of this command"),
    (["compare", "{S}/gen", "{S}/packed", "--out", "{S}/unpacked"], "not a magvit3d report"),
    (["evaluate", "--data", "{S}/packed", "--generated", "{S}/gen", "--probe", "{S}/probe", "--out", "{S}/packed"],
     "an input of this command"),
    (["evaluate", "--data", "{S}/packed", "--generated", "{S}/gen", "--probe", "{S}/probe", "--out", "."],
     "current directory"),
]


@pytest.mark.parametrize("args,needle", KNOWN_BAD, ids=[" ".join(a[:1] + a[-2:]) for a, _ in KNOWN_BAD])
def test_known_bad_inputs_exit_2_with_one_line(args, needle, templates, tmp_path):
    if "mps" in args:
        import torch

        if torch.backends.mps.is_available():
            pytest.skip("this machine has an MPS device")
    scratch = tmp_path / "s"
    scratch.mkdir()
    for name in {m for a in args for m in re.findall(r"\{S\}/([^/]+)", a)} & {p.name for p in templates.iterdir()}:
        p = templates / name
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, scratch / name)
    (scratch / "latin1.toml").write_bytes(b"[render]\nengine = \"\xe9\"\n")
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    before = snapshot(scratch)
    argv = [a.replace("{S}", str(scratch)) for a in args]
    with isolated(home, cwd):
        code, out, err = invoke(argv)
    check_outcome(args[0], argv, code, out, err)
    assert code == 2 and needle in err, (code, err)
    assert snapshot(scratch) == before and not list(cwd.iterdir()) and not list(home.iterdir())


def test_the_commands_are_the_documented_ones():
    assert set(COMMANDS) >= {"render", "verify", "pack", "preview", "train-tokenizer", "tokenize", "reconstruct",
                             "train-transformer", "generate", "train-probe", "evaluate", "compare", "demo",
                             "config show"}


# ---------------------------------------------------------------------------------------------------------------------
# a few real processes of the installed entry point

def run_script(args, cwd, home):
    env = {**os.environ, "HOME": str(home)}
    env.pop("MAGVIT3D_DEBUG", None)
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


@pytest.mark.parametrize("args,needle", [
    (["render", "--out", "{S}/out", "--config", "{S}"], "is a directory"),
    (["render", "{S}/out", "--set", "render.fps=nan"], "render.fps"),
    (["train-probe", "--data", "{S}/missing", "--out", "{S}/o", "--set", "train.lr=inf"], "train.lr"),
    (["generate", "--transformer", "{S}", "--task", "predict", "--out", "{S}/o", "--temperature", "nan"],
     "--temperature"),
])
def test_real_process_bad_input(tmp_path, args, needle):
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    (tmp_path / "s").mkdir()
    proc = run_script([a.replace("{S}", str(tmp_path / "s")) for a in args], cwd, home)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and ERROR_LINE.match(lines[0]) and needle in lines[0], proc
    assert not list(cwd.iterdir()) and not list(home.iterdir())
    assert not list((tmp_path / "s").iterdir())


def test_real_process_no_arguments_prints_help():
    proc = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("Usage: magvit3d") and "train-tokenizer" in proc.stdout
    assert proc.stderr == ""


def test_real_process_unexpected_error_is_one_line_without_traceback(tmp_path):
    """A bug (here: an exception injected into a command) still reaches the user as one line, exit 1; with
    MAGVIT3D_DEBUG=1 the traceback is shown."""
    code = ("import sys, datagen.verify as v\n"
            "def boom(*a, **k):\n    raise ZeroDivisionError('injected')\n"
            "v.verify_dataset = boom\n"
            "from datagen.cli import main\nmain(sys.argv[1:])\n")
    args = [sys.executable, "-c", code, "verify", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k != "MAGVIT3D_DEBUG"}
    proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc
    assert lines[0].startswith("magvit3d: internal error: ZeroDivisionError: injected") and "MAGVIT3D_DEBUG" in lines[0]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env={**env, "MAGVIT3D_DEBUG": "1"},
                          timeout=60)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ZeroDivisionError: injected" in proc.stderr


@pytest.mark.skipif(__import__("importlib").util.find_spec("bpy") is None, reason="needs bpy")
def test_real_render_writes_nothing_into_cwd_or_home(tmp_path):
    """The Blender workers too: without XDG_CACHE_HOME, Blender creates ~/.cache/thumbnails/... in $HOME."""
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    proc = run_script(["render", "--out", tmp_path / "ds", "-c", "tiny", "-n", "1", "--frames", "2", "--resolution",
                       "16",
                       "--samples", "1", "--device", "cpu", "--no-progress"], cwd, home)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ds" / "samples" / "000000" / "meta.json").is_file()
    assert not list(home.rglob("*")) and not list(cwd.rglob("*")), (list(home.rglob("*")), list(cwd.rglob("*")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "ds", "home"]
