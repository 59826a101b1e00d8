"""The release's small files ship inside the package: byte for byte the release's, found by the library."""
import shutil
import subprocess
import sys
import zipfile

import pytest

from gpt1f import release_data
from gpt1f.download import RELEASE_SHA1, git_blob_sha1
from tests.conftest import ROOT


@pytest.mark.parametrize("name", release_data.NAMES)
def test_packaged_files_are_the_releases_byte_for_byte(name):
    assert git_blob_sha1(release_data.path(name)) == RELEASE_SHA1[name]


def test_the_mit_notice_lies_beside_them():
    notice = (release_data.path(release_data.NAMES[0]).parent / "LICENSE").read_text()
    assert "MIT License" in notice and "Copyright (c) 2018 OpenAI" in notice


def test_unknown_names_are_refused():
    with pytest.raises(KeyError, match="params_0.npy"):
        release_data.path("params_0.npy")


def test_a_built_wheel_holds_them(tmp_path):
    """``pip wheel`` of a copy of the source tree (no network: build isolation off) ships all four."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "gpt1f", source / "gpt1f", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(tmp_path), str(source)], check=True,
                   capture_output=True, cwd=tmp_path)
    [wheel] = tmp_path.glob("gpt1f-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (*release_data.NAMES, "LICENSE"):
        assert f"gpt1f/release_data/{name}" in names, name
