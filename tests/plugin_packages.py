"""Build and install small real plugin packages for tests, without touching the test environment.

Packages are installed with ``pip install --no-deps --no-build-isolation --target DIR``: a real
build (setuptools, entry points in ``*.dist-info``) into a throwaway folder. Code in the test
process sees them once DIR is on ``sys.path``; a ``tlkit`` subprocess with ``PYTHONPATH=DIR``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "tlkit-example-plugin"


def write_package(root: Path, dist: str, module_source: str, *, entry_point: str = "plugin") -> Path:
    """A one-module package ``dist`` (module ``dist`` with ``-`` as ``_``) whose ``tlkit`` entry point is that module."""
    module = dist.replace("-", "_")
    folder = root / dist
    (folder / module).mkdir(parents=True, exist_ok=True)
    (folder / module / "__init__.py").write_text(textwrap.dedent(module_source))
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["setuptools>=68"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "0.0.1"

            [project.entry-points.tlkit]
            {entry_point} = "{module}"

            [tool.setuptools]
            packages = ["{module}"]
            """
        )
    )
    return folder


def pip_install(sources: Sequence[Path], target: Path) -> Path:
    """Build and install ``sources`` (package folders) into ``target`` in one pip call.

    Each source is copied beside ``target`` first: setuptools builds in the source tree and would
    leave ``build/`` and ``*.egg-info`` in the checkout.
    """
    staging = target.parent / f"{target.name}-src"
    copies = []
    for source in sources:
        copy = staging / source.name
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"), dirs_exist_ok=True)
        copies.append(copy)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target)]
    result = subprocess.run([*command, *map(str, copies)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
    return target


def subprocess_env(target: Path, **extra: str) -> dict[str, str]:
    """Environment for a subprocess that sees the packages installed in ``target``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: threads only contend on a busy machine
    env.pop("TLKIT_LOAD_PLUGINS", None)
    env.update(extra)
    return env


def tlkit_command() -> list[str]:
    """The installed ``tlkit`` console script (the entry point users run), else ``python -m tlkit``."""
    script = Path(sys.executable).with_name("tlkit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tlkit"]


def run_tlkit(args: Sequence[str], target: Path, cwd: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*tlkit_command(), *args], capture_output=True, text=True, cwd=cwd, env=dict(env or subprocess_env(target)), timeout=600)
