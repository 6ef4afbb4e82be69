"""``tlkit new-plugin NAME``: a package skeleton whose own tests pass as generated, installable and listed.

The slow test is issue 20's must hold 4 as written: ``tlkit new-plugin demo``, ``pip install -e demo``
in a fresh virtual environment (``--system-site-packages``, seeing this interpreter's packages), the
package's own tests pass there, and ``tlkit backbones 'demo*'`` lists its backbone.
"""

from __future__ import annotations

import fnmatch
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from plugin_packages import REPO

from tlkit.cli.app import main
from tlkit.cli.new_plugin import TEMPLATE_DIR, PluginNames


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code or 0)


def test_new_plugin_writes_the_skeleton(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("new-plugin", "demo", "--dir", str(tmp_path)) == 0
    root = tmp_path / "demo"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "README.md",
        "pyproject.toml",
        "tests/test_tlkit_demo.py",
        "tlkit_demo/__init__.py",
    ]
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["name"] == "tlkit-demo" and project["project"]["entry-points"]["tlkit"] == {"demo": "tlkit_demo"}
    source = (root / "tlkit_demo" / "__init__.py").read_text()
    for entry in ('name="demo_cnn"', 'name="demo_csv"', 'name="demo_centroid"', "tlkit_plugin_api = 2", "@dataclass(frozen=True)"):
        assert entry in source
    assert "{{" not in source + (root / "README.md").read_text() + (root / "tests" / "test_tlkit_demo.py").read_text()
    compile(source, "tlkit_demo/__init__.py", "exec")
    assert capsys.readouterr().out.startswith(f"wrote {root}: tlkit-demo with backbone demo_cnn")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the staging folder is gone


@pytest.mark.parametrize(
    ("name", "dist", "module", "prefix"),
    [("demo", "tlkit-demo", "tlkit_demo", "demo"), ("my-nets", "tlkit-my-nets", "tlkit_my_nets", "my_nets"), ("tlkit-extra", "tlkit-extra", "tlkit_extra", "extra")],
)
def test_names_follow_from_name(name: str, dist: str, module: str, prefix: str) -> None:
    assert PluginNames.of(name) == PluginNames(name=name, dist=dist, module=module, prefix=prefix)


@pytest.mark.parametrize("name", ["1demo", "Demo", "my plugin", "../escape", "a/b", "demo.", "de--mo", "-demo", "", "x" * 41, "class", "demo\nx"])
def test_a_name_that_is_not_a_package_name_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    """Hostile: traversal, separators, control characters, keywords, overlong names write nothing."""
    assert cli("new-plugin", "--dir", str(tmp_path), "--", name) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and ("not a valid plugin package name" in err or "keyword" in err), err
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent / "escape").exists()


def test_an_existing_folder_or_file_is_refused_and_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "mine.txt").write_text("keep")
    (tmp_path / "other").write_text("a file")
    (tmp_path / "linked").symlink_to(tmp_path / "nowhere")
    for name in ("demo", "other", "linked"):
        assert cli("new-plugin", name, "--dir", str(tmp_path)) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: {tmp_path / name} already exists; choose another name or remove it first"
    assert (tmp_path / "demo" / "mine.txt").read_text() == "keep" and (tmp_path / "other").read_text() == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "linked", "other"]


def test_the_wheel_carries_every_template_file() -> None:
    """The templates are package data: pyproject's glob must cover each (a wheel without them writes nothing)."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tlkit.cli"]
    package_dir = REPO / "tlkit" / "cli"
    files = [str(p.relative_to(package_dir)) for p in TEMPLATE_DIR.iterdir()]
    assert files and all(any(fnmatch.fnmatch(f, pattern) for pattern in data) for f in files), (files, data)


def _fresh_venv(folder: Path) -> Path:
    """A venv with ``--system-site-packages`` that also sees this interpreter's own site-packages (a venv's venv does not)."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True)
    parent = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib.stdout.strip()) / "parent-site.pth").write_text("\n".join(parent) + "\n")
    return python


@pytest.mark.slow
def test_must_hold_4_new_plugin_installs_tests_pass_and_it_is_listed(tmp_path: Path) -> None:
    python = _fresh_venv(tmp_path / "venv")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TLKIT_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("TLKIT_LOAD_PLUGINS", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(python), *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)

    made = run("-m", "tlkit", "new-plugin", "demo")
    assert made.returncode == 0, made.stderr
    installed = run("-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-index", "-e", "demo")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    tests = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "demo")
    assert tests.returncode == 0 and "4 passed" in tests.stdout, tests.stdout[-3000:] + tests.stderr[-2000:]
    listed = run("-m", "tlkit", "backbones", "demo*", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"name": "demo_cnn"' in listed.stdout and '"plugin": "tlkit-demo"' in listed.stdout, listed.stdout
    assert "warning" not in listed.stderr.lower(), listed.stderr
