"""A non-editable install (`pip install .`) ships the config presets: the wheel holds every
datagen/presets/<kind>/<name>.toml, and datagen unpacked from it, away from this checkout, finds and reads them.
(The presets used to sit in configs/ beside the packages, where an installed datagen never looked.)"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from datagen.config import CONFIG_ROOT, load_config
from datagen.spec import DatasetConfig

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "datagen", "blender_scenes", "training", "evaluation")


def presets() -> list[str]:
    """The checkout's presets, as paths inside the datagen package."""
    return sorted(f"datagen/presets/{p.parent.name}/{p.name}" for p in CONFIG_ROOT.glob("*/*.toml"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built offline from a copy of its sources (a build writes build/ and *.egg-info where it
    runs, which must not land in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--quiet", str(src), "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    (found,) = out.glob("magvit3d-*.whl")
    return found


def test_the_wheel_ships_every_preset(wheel):
    expected = presets()
    assert {Path(p).parent.name for p in expected} == {"dataset", "tokenizer", "transformer", "probe"}
    assert {Path(p).stem for p in expected} >= {"tiny", "demo", "full"}
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n for n in names if n.startswith("datagen/presets/")) == expected


def test_datagen_installed_from_the_wheel_reads_its_own_presets(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)   # what pip install puts into site-packages
    code = (
        "import sys; from pathlib import Path\n"
        "from datagen.config import CONFIG_ROOT, load_config, preset_path, read_toml\n"
        "from datagen.spec import DatasetConfig\n"
        "site = Path(sys.argv[1]).resolve()\n"
        "assert CONFIG_ROOT.is_relative_to(site), CONFIG_ROOT   # the installed copy, not this checkout\n"
        "for kind in ('dataset', 'tokenizer', 'transformer', 'probe'):\n"
        "    for name in ('tiny', 'demo', 'full'):\n"
        "        assert read_toml(preset_path(kind, name)), (kind, name)\n"
        "print(load_config(DatasetConfig, 'dataset', 'tiny', []).dataset.num_samples)\n")
    # PYTHONPATH comes before the checkout's editable install; the working directory is not the checkout
    run = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)}, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(load_config(DatasetConfig, "dataset", "tiny", []).dataset.num_samples)
