"""Config loading (datagen.config) and DatasetConfig.validate (datagen.spec): presets, TOML files, --set
overrides, unknown keys, wrong types and out-of-range values. numpy only, no Blender."""
from __future__ import annotations

import dataclasses
import json
import tomllib
import typing

import pytest

from datagen.config import (CONFIG_ROOT, UserError, apply_overrides, from_dict, load_config, parse_override,
                            preset_path, to_dict, to_toml)
from datagen.spec import (CameraSpec, DatasetConfig, FAMILIES, GROUND_TEXTURES, SHAPES, TEXTURES, build_spec)

PRESETS = ("tiny", "demo", "demo-textured", "full")


def load(source=None, overrides=None) -> DatasetConfig:
    return load_config(DatasetConfig, "dataset", source, overrides)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, f"UserError message is not one line: {msg!r}"
    return msg


# --- presets and files ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", PRESETS)
def test_presets_load(name):
    cfg = load(name)
    assert isinstance(cfg, DatasetConfig)
    raw = tomllib.loads((CONFIG_ROOT / "dataset" / f"{name}.toml").read_text())
    defaults = to_dict(DatasetConfig())
    got = to_dict(cfg)
    # every key the preset sets is what we got; every other key keeps the class default
    for section, values in defaults.items():
        for key, default in values.items():
            want = raw.get(section, {}).get(key, default)
            if section == "cameras" and key == "rig":
                want = [{"target": [0.0, 0.0, 0.0], **c} for c in want]
            assert got[section][key] == want, (section, key)
    assert set(raw) <= set(defaults)
    assert len(cfg.cameras.rig) >= 2
    assert cfg.render.resolution % 8 == 0


def test_preset_scales():
    tiny, demo, _, full = (load(n) for n in PRESETS)
    assert (tiny.dataset.num_samples, tiny.render.resolution, tiny.render.frames) == (6, 32, 4)
    assert demo.dataset.num_samples >= 256 and demo.render.resolution == 64 and demo.render.frames == 16
    assert full.dataset.num_samples >= 500 and full.render.resolution == 128 and full.render.frames == 16
    assert len(full.cameras.rig) == 3
    assert [c.position for c in full.cameras.rig] == [(2.0, 0.0, 1.0), (0.0, 2.0, 1.0), (-2.0, 0.0, 1.0)]


def test_no_source_gives_defaults():
    assert load(None) == DatasetConfig()


def test_toml_path(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text('[render]\nresolution = 48\nframes = 5\n[objects]\nshapes = ["cone"]\n')
    cfg = load(str(p))
    assert (cfg.render.resolution, cfg.render.frames, cfg.objects.shapes) == (48, 5, ["cone"])
    assert cfg.render.samples == DatasetConfig().render.samples
    assert load(p).render.resolution == 48          # a Path works too


def test_unknown_preset_lists_allowed():
    with pytest.raises(UserError) as e:
        load("huge")
    msg = one_line(e)
    assert "'huge'" in msg and "allowed" in msg
    for name in PRESETS:
        assert name in msg
    with pytest.raises(UserError, match="unknown dataset preset 'huge'"):
        preset_path("dataset", "huge")


def test_demo_textured_is_a_dataset_preset_that_the_other_kinds_answer_with_demo():
    assert preset_path("dataset", "demo-textured") == CONFIG_ROOT / "dataset" / "demo-textured.toml"
    for kind in ("tokenizer", "transformer", "probe"):
        assert preset_path(kind, "demo-textured") == CONFIG_ROOT / kind / "demo.toml"
    assert preset_path("probe", "study") == CONFIG_ROOT / "probe" / "demo.toml"   # the rest are the study's own
    for kind in ("dataset", "tokenizer", "transformer"):
        assert preset_path(kind, "study") == CONFIG_ROOT / kind / "study.toml"
    with pytest.raises(UserError,
                       match=r"unknown probe preset 'huge'; allowed: 2d, 2d-fast, demo, demo-textured, full, study, tiny$"):
        preset_path("probe", "huge")


def test_missing_toml_path(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(UserError, match="config file not found") as e:
        load(str(missing))
    assert str(missing) in one_line(e)


def test_invalid_toml(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[render\nsamples = \n")
    with pytest.raises(UserError, match="not valid TOML") as e:
        load(str(p))
    assert str(p) in str(e.value)


def test_to_dict_round_trip():
    for name in PRESETS:
        cfg = load(name, ["cameras.motion=orbit", 'objects.shapes=["cone", "cube"]'])
        d = to_dict(cfg)
        text = json.dumps(d)                       # plain JSON data
        back = from_dict(DatasetConfig, json.loads(text))
        assert back == cfg
        assert to_dict(back) == d
    d = to_dict(DatasetConfig())
    assert d["objects"]["size_range"] == [0.25, 0.5]
    assert d["cameras"]["rig"][0] == {"name": "view0", "position": [2.0, 0.0, 1.0], "target": [0.0, 0.0, 0.0]}


def test_demo_is_the_easy_setting_and_demo_textured_the_old_demo():
    """demo-textured is the demo before the scene-difficulty presets (the class defaults, the same config hash);
    demo differs from it in the ground style and the object size only."""
    from datagen.dataset import config_hash

    demo, textured = to_dict(load("demo")), to_dict(load("demo-textured"))
    assert textured == to_dict(DatasetConfig()) and config_hash(textured) == "c65faf760173b661"
    assert demo["ground"]["textures"] == ["plain"] and demo["objects"]["size_range"] == [0.35, 0.6]
    demo["ground"]["textures"], demo["objects"]["size_range"] = textured["ground"]["textures"], [0.25, 0.5]
    assert demo == textured


def test_contrast_range_is_left_out_of_to_dict_at_its_default():
    """So dataset.json configs and config hashes of datasets rendered before the key existed still match."""
    assert "contrast_range" not in to_dict(DatasetConfig())["ground"]
    assert to_dict(load(None, ["ground.contrast_range=[1, 1]"])) == to_dict(DatasetConfig())
    assert to_dict(load(None, ["ground.contrast_range=[0, 0.5]"]))["ground"]["contrast_range"] == [0.0, 0.5]
    assert "contrast_range = [1.0, 1.0]" in to_toml(DatasetConfig())          # `config show` lists it all the same


@pytest.mark.parametrize("value", [[0.6, 0.4], [-0.1, 0.5], [0.0, 1.5]])
def test_contrast_range_within_0_and_1(value):
    assert bad({"ground": {"contrast_range": value}}) == \
        f"ground.contrast_range = {[float(v) for v in value]} must be [low, high] with 0 <= low <= high <= 1"


# --- unknown keys --------------------------------------------------------------------------------

def test_unknown_top_level_key():
    with pytest.raises(UserError) as e:
        from_dict(DatasetConfig, {"rendr": {"samples": 3}})
    msg = one_line(e)
    assert "unknown config key 'rendr'" in msg and "did you mean 'render'" in msg


def test_unknown_nested_key_suggests_close_match():
    with pytest.raises(UserError) as e:
        load("tiny", ["render.sampels=3"])
    msg = one_line(e)
    assert "'render.sampels'" in msg and "did you mean 'samples'" in msg
    with pytest.raises(UserError, match=r"'objects\.size_rnage'.*did you mean 'size_range'"):
        from_dict(DatasetConfig, {"objects": {"size_rnage": [0.2, 0.3]}})


def test_unknown_key_without_close_match_lists_allowed():
    with pytest.raises(UserError) as e:
        from_dict(DatasetConfig, {"render": {"zzzzzz": 1}})
    msg = one_line(e)
    assert "'render.zzzzzz'" in msg and "did you mean" not in msg and "resolution" in msg and "samples" in msg


def test_unknown_key_in_camera_rig_entry():
    rig = [{"name": "a", "postion": [1, 1, 1]}, {"name": "b", "position": [-1, 1, 1]}]
    with pytest.raises(UserError, match=r"cameras\.rig\[0\]\.postion.*did you mean 'position'"):
        from_dict(DatasetConfig, {"cameras": {"rig": rig}})


def test_unknown_key_in_toml_file(tmp_path):
    p = tmp_path / "typo.toml"
    p.write_text("[render]\nsampels = 3\n")
    with pytest.raises(UserError, match="render.sampels"):
        load(str(p))


# --- wrong types ---------------------------------------------------------------------------------

@pytest.mark.parametrize("override,key,what", [
    ('render.samples="8"', "render.samples", "must be an integer"),
    ("render.samples=true", "render.samples", "must be an integer"),
    ("render.samples=2.5", "render.samples", "must be an integer"),
    ("dataset.num_samples=many", "dataset.num_samples", "must be an integer"),
    ("objects.size_range=[0.3]", "objects.size_range", "must have 2 items"),
    ("objects.size_range=[0.1, 0.2, 0.3]", "objects.size_range", "must have 2 items"),
    ('objects.size_range=[0.1, "big"]', "objects.size_range[1]", "must be a number"),
    ("objects.size_range=0.3", "objects.size_range", "must be a list"),
    ('objects.shapes="cube"', "objects.shapes", "must be a list"),
    ("objects.shapes=[1]", "objects.shapes[0]", "must be a string"),
    ('cameras.lens_mm="35"', "cameras.lens_mm", "must be a number"),
    ("cameras.lens_mm=true", "cameras.lens_mm", "must be a number"),
    ("render.depth=1", "render.depth", "must be true or false"),
    ("render.engine=3", "render.engine", "must be a string"),
    ("render=3", "render", "must be a section"),
    ("dataset.splits=0.5", "dataset.splits", "must be a table"),
    ('dataset.splits={train="all"}', "dataset.splits.train", "must be a number"),
])
def test_wrong_types_name_the_key(override, key, what):
    with pytest.raises(UserError) as e:
        load("tiny", [override])
    msg = one_line(e)
    assert msg.startswith(key + " ") or f"{key} " in msg, msg
    assert what in msg


def test_int_accepted_for_float():
    cfg = load("tiny", ["cameras.lens_mm=50", "objects.size_range=[1, 2]"])
    assert cfg.cameras.lens_mm == 50.0 and isinstance(cfg.cameras.lens_mm, float)
    assert cfg.objects.size_range == (1.0, 2.0) and all(isinstance(x, float) for x in cfg.objects.size_range)


# --- overrides -----------------------------------------------------------------------------------

def test_override_int():
    cfg = load("tiny", ["render.samples=3"])
    assert cfg.render.samples == 3
    assert cfg.render.resolution == 32 and cfg.dataset.num_samples == 6   # the rest of the preset kept


def test_override_list():
    cfg = load("demo", ['objects.shapes=["cube"]', "trajectories.families = ['helical', 'linear']"])
    assert cfg.objects.shapes == ["cube"]
    assert cfg.trajectories.families == ["helical", "linear"]


def test_override_bare_string():
    cfg = load("tiny", ["render.engine=eevee", "render.denoiser = none", "cameras.motion=orbit"])
    assert (cfg.render.engine, cfg.render.denoiser, cfg.cameras.motion) == ("eevee", "none", "orbit")


def test_override_inline_table_list():
    cfg = load("tiny", ['cameras.rig=[{name="a", position=[1, 1, 1]}, {name="b", position=[-1, 1, 1]}]'])
    assert cfg.cameras.rig == [CameraSpec("a", (1.0, 1.0, 1.0)), CameraSpec("b", (-1.0, 1.0, 1.0))]


def test_override_new_section_from_defaults():
    cfg = load(None, ["trajectories.gravity=9.81", "dataset.splits={train=0.5, val=0.5}"])
    assert cfg.trajectories.gravity == 9.81
    assert cfg.dataset.splits == {"train": 0.5, "val": 0.5}


def test_later_override_wins():
    assert load("tiny", ["render.samples=3", "render.samples=7"]).render.samples == 7


def test_dict_overrides():
    data = apply_overrides({"render": {"samples": 1}}, {"render.samples": 5, "objects.shapes": ["cone"]})
    assert data == {"render": {"samples": 5}, "objects": {"shapes": ["cone"]}}
    assert load("tiny", {"render.frames": 9}).render.frames == 9


def test_parse_override():
    assert parse_override("render.samples=8") == (["render", "samples"], 8)
    assert parse_override(" objects.size_range = [0.1, 0.2] ") == (["objects", "size_range"], [0.1, 0.2])
    assert parse_override("render.engine=eevee") == (["render", "engine"], "eevee")
    assert parse_override("a.b=x=y") == (["a", "b"], "x=y")
    assert parse_override("render.depth=true") == (["render", "depth"], True)


@pytest.mark.parametrize("bad,what", [("foo", "is not KEY=VALUE"), ("render.samples", "is not KEY=VALUE"),
                                      ("=3", "has an empty key"), ("render..samples=3", "has an empty key"),
                                      (".samples=3", "has an empty key")])
def test_malformed_override(bad, what):
    with pytest.raises(UserError) as e:
        parse_override(bad)
    assert what in one_line(e) and repr(bad) in str(e.value)
    with pytest.raises(UserError, match=what):
        load("tiny", [bad])


def test_override_through_a_value_is_an_error():
    with pytest.raises(UserError, match=r"cannot set render\.samples\.x: 'samples' is not a section"):
        load("tiny", ["render.samples.x=3"])


# --- DatasetConfig.validate ----------------------------------------------------------------------

def bad(data: dict) -> str:
    """The one-line UserError message from_dict raises for `data`."""
    with pytest.raises(UserError) as e:
        from_dict(DatasetConfig, data)
    return one_line(e)


@pytest.mark.parametrize("section,key,value,noun,allowed", [
    ("objects", "shapes", ["cube", "sphere"], "shape", SHAPES),
    ("trajectories", "families", ["linear", "spiral"], "family", FAMILIES),
    ("objects", "textures", ["plaid"], "texture", TEXTURES),
    ("ground", "textures", ["plaid"], "texture", GROUND_TEXTURES),
    ("objects", "textures", ["plain"], "texture", TEXTURES),       # a flat colour is for the ground only
    ("render", "engine", "luxcore", "engine", ("cycles", "eevee")),
    ("render", "denoiser", "optix", "denoiser", ("none", "oidn")),
    ("cameras", "motion", "shake", "motion", ("static", "orbit", "jitter")),
])
def test_unknown_choice(section, key, value, noun, allowed):
    msg = bad({section: {key: value}})
    wrong = value[-1] if isinstance(value, list) else value
    assert f"unknown {noun} {wrong!r}" in msg, msg      # names what it is, in words, and the bad value
    assert f"{section}.{key}" in msg
    assert "allowed: " + ", ".join(allowed) in msg


@pytest.mark.parametrize("section,key", [("objects", "shapes"), ("trajectories", "families"),
                                         ("objects", "textures")])
def test_empty_choice_list(section, key):
    msg = bad({section: {key: []}})
    assert f"{section}.{key} is empty" in msg and "allowed: " in msg


@pytest.mark.parametrize("res", [60, 100, 0, -8])
def test_resolution_multiple_of_8(res):
    msg = bad({"render": {"resolution": res}})
    assert f"render.resolution = {res}" in msg and "multiple of 8" in msg


@pytest.mark.parametrize("frames", [1, 0, -3])
def test_frames_at_least_2(frames):
    msg = bad({"render": {"frames": frames}})
    assert f"render.frames = {frames}" in msg and "at least 2" in msg


@pytest.mark.parametrize("n", [0, -1, -100])
def test_num_samples_positive(n):
    msg = bad({"dataset": {"num_samples": n}})
    assert f"dataset.num_samples = {n}" in msg and "positive" in msg


@pytest.mark.parametrize("splits", [{"train": 0.5, "val": 0.1, "test": 0.1}, {"train": 0.9, "val": 0.2},
                                    {"train": 1.2, "val": -0.2}, {}])
def test_splits_sum_to_one(splits):
    msg = bad({"dataset": {"splits": splits}})
    assert "dataset.splits" in msg and str(splits) in msg and "sum to 1" in msg


def test_splits_ok_within_tolerance():
    cfg = from_dict(DatasetConfig, {"dataset": {"splits": {"train": 0.7, "val": 0.2, "test": 0.1}}})
    assert sum(cfg.dataset.splits.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("section,key,value,what", [
    ("render", "fps", 0, "render.fps = 0"), ("render", "samples", 0, "render.samples = 0"),
    ("render", "max_bounces", -1, "render.max_bounces = -1"),
    ("trajectories", "gravity", 0.0, "trajectories.gravity = 0.0"),
    ("trajectories", "max_tries", 0, "trajectories.max_tries = 0"),
    ("cameras", "lens_mm", 0.0, "cameras.lens_mm"), ("cameras", "sensor_mm", -36.0, "cameras.sensor_mm"),
])
def test_other_scalar_limits(section, key, value, what):
    assert what in bad({section: {key: value}})


def test_fewer_than_two_cameras():
    msg = bad({"cameras": {"rig": [{"name": "solo", "position": [2.0, 0.0, 1.0]}]}})
    assert "cameras.rig has 1 camera(s)" in msg and "at least 2" in msg
    assert "cameras.rig has 0 camera(s)" in bad({"cameras": {"rig": []}})


def test_camera_position_equal_to_target():
    rig = [{"name": "a", "position": [2.0, 0.0, 1.0]}, {"name": "b", "position": [0.5, 0.5, 0.5],
                                                        "target": [0.5, 0.5, 0.5]}]
    msg = bad({"cameras": {"rig": rig}})
    assert "camera 'b'" in msg and "position equals its target [0.5, 0.5, 0.5]" in msg


@pytest.mark.parametrize("names", [["a", "a"], ["a", "b c"], ["a", "b/c"]])
def test_camera_names_unique_and_simple(names):
    rig = [{"name": n, "position": [2.0, float(i), 1.0]} for i, n in enumerate(names)]
    assert "must be unique and alphanumeric" in bad({"cameras": {"rig": rig}})


def _range_fields():
    """Every (section, key) of a [low, high] range field in DatasetConfig."""
    out = []
    for sec_name, sec_cls in typing.get_type_hints(DatasetConfig).items():
        hints = typing.get_type_hints(sec_cls)
        for f in dataclasses.fields(sec_cls):
            if typing.get_origin(hints[f.name]) is tuple and f.name.endswith("_range"):
                out.append((sec_name, f.name))
    return out


def test_range_fields_found():
    fields = _range_fields()
    assert ("objects", "size_range") in fields and ("lights", "key_strength_range") in fields
    assert len(fields) >= 20


@pytest.mark.parametrize("section,key", _range_fields())
def test_reversed_range_rejected(section, key):
    lo, hi = getattr(getattr(DatasetConfig(), section), key)
    if (section, key) == ("ground", "contrast_range"):   # the one default that is a point, [1, 1]
        lo = 0.5
    assert lo < hi
    msg = bad({section: {key: [hi, lo]}})
    assert f"{section}.{key}" in msg and str([hi, lo]) in msg and "low <= high" in msg, msg


@pytest.mark.parametrize("key", ["size_range", "aspect_range", "texture_scale_range"])
def test_non_positive_range_rejected(key):
    msg = bad({"objects": {key: [-0.5, 0.5]}})
    assert f"objects.{key} = [-0.5, 0.5]" in msg and "0 < low" in msg
    assert f"objects.{key}" in bad({"objects": {key: [0.0, 0.5]}})


def test_zero_allowed_where_documented():
    cfg = from_dict(DatasetConfig, {"objects": {"spin_speed_range": [0.0, 0.0], "roughness_range": [0.0, 1.0]},
                                    "trajectories": {"climb_rate_range": [0.0, 0.1]}})
    assert cfg.objects.spin_speed_range == (0.0, 0.0)
    assert "objects.spin_speed_range" in bad({"objects": {"spin_speed_range": [-1.0, 1.0]}})


# Settings that pass validate today but crash later with a bare ValueError/traceback (not a one-line UserError).

def test_negative_dataset_seed_rejected_up_front():
    # np.random.SeedSequence rejects negative entropy; validate must say so, not build_spec's ValueError
    try:
        cfg = from_dict(DatasetConfig, {"dataset": {"seed": -1}})
    except UserError as e:
        assert "dataset.seed" in str(e)
        return
    build_spec(cfg, 0)     # if validate accepts it, a spec must build


def test_camera_straight_above_target_rejected_up_front():
    rig = [{"name": "top", "position": [0.0, 0.0, 3.0]}, {"name": "side", "position": [2.0, 0.0, 1.0]}]
    with pytest.raises(UserError, match="top"):
        from_dict(DatasetConfig, {"cameras": {"rig": rig}})


def test_negative_jitter_rejected_up_front():
    with pytest.raises(UserError, match="cameras.jitter_m"):
        from_dict(DatasetConfig, {"cameras": {"motion": "jitter", "jitter_m": -0.01}})


def test_valid_config_passes():
    cfg = from_dict(DatasetConfig, {"render": {"resolution": 72, "frames": 2}, "dataset": {"num_samples": 1},
                                    "objects": {"shapes": ["cone"]}, "cameras": {"motion": "jitter"}})
    assert cfg.render.resolution == 72 and cfg.objects.shapes == ["cone"]


# A camera below the ground, or one looking away from the scene, used to pass these checks and render empty masks.

@pytest.mark.parametrize("z", [-1.0, 0.0])
def test_camera_at_or_below_the_ground_is_rejected_naming_it(z):
    rig = [{"name": "view0", "position": [2.0, 0.0, 1.0]}, {"name": "low", "position": [0.0, 2.0, z]}]
    msg = bad({"cameras": {"rig": rig}})
    assert msg == (f"camera 'low' position z = {z:g} is at or below the ground (z = 0), where it sees nothing; "
                   f"allowed: z > 0, e.g. position = [2.0, 0.0, 1.0]")


@pytest.mark.parametrize("target", [[4.0, 0.0, 1.5],      # looks away from the scene, into the sky
                                    [0.0, 0.0, -40.0]])   # looks steeply down past the scene
def test_camera_that_does_not_see_the_scene_is_rejected_naming_it(target):
    rig = [{"name": "view0", "position": [2.0, 0.0, 1.0], "target": target},
           {"name": "view1", "position": [0.0, 2.0, 1.0]}]
    msg = bad({"cameras": {"rig": rig}})
    assert msg.startswith(f"camera 'view0' (position [2.0, 0.0, 1.0], target {target}) does not see the middle "
                          f"of the scene [0.0, 0.0, 0.5]"), msg
    # the same camera aimed at the scene is fine, and so is a camera just above the ground
    rig[0]["target"] = [0.0, 0.0, 0.3]
    rig[1]["position"] = [0.0, 2.5, 0.05]
    assert from_dict(DatasetConfig, {"cameras": {"rig": rig}}).cameras.rig[1].position == (0.0, 2.5, 0.05)


@pytest.mark.parametrize("name", PRESETS)
def test_to_toml_writes_every_key_and_reads_back_the_same_config(name, tmp_path):
    cfg = load(name, ['objects.shapes=["cone", "cube"]', "dataset.splits={train = 0.5, test = 0.5}"])
    text = to_toml(cfg)
    # every section, also one that to_dict leaves out at its default ([scene] of a 3D config)
    assert tomllib.loads(text).keys() == {f.name for f in dataclasses.fields(cfg)} >= to_dict(cfg).keys()
    path = tmp_path / "shown.toml"
    path.write_text(text)
    assert to_dict(load(str(path))) == to_dict(cfg)
    for section, values in to_dict(DatasetConfig()).items():   # every key, also the ones the preset leaves out
        assert f"[{section}]" in text and all(f"\n{key} = " in text for key in values)


def test_to_toml_quotes_what_toml_needs_quoted():
    from training.train_tokenizer import load_run_config

    path = "/tmp/a \"b\"\\c\u00e9\u007f\U0001F600.pth"   # quotes, a backslash, non-ASCII, DEL, beyond the BMP
    cfg = load_run_config("tiny", {"train.lpips_weights": path})
    assert tomllib.loads(to_toml(cfg))["train"]["lpips_weights"] == path
