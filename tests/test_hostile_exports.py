"""``tlkit export`` to a place it cannot write: one line naming the file, exit 2, no partial file.
(Tests run as root here, so a read-only folder is a read-only *file system*: ``/proc/self``.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_runs import make_data, make_run, make_weights

from tlkit.errors import ExportError


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tlkit.contract.plugin_manager import load_plugins

    base = tmp_path_factory.mktemp("tiny")
    root = make_data(base / "data")
    return make_run(load_plugins(entry_points=False), root, base / "run", str(make_weights(base / "weights.pth")))


UNWRITABLE = [Path("/proc/self/model.pt"), Path("/proc/self/no/such/model.pt"), Path("/sys/model.pt")]


@pytest.mark.parametrize("target", UNWRITABLE, ids=["proc", "proc-sub", "sys"])
def test_export_to_an_unwritable_place_is_one_line(tiny_run: Path, target: Path) -> None:
    from tlkit.contract.plugin_manager import load_plugins
    from tlkit.saved.export import export
    from tlkit.saved.reader import load_model

    model = load_model(tiny_run, load_plugins(entry_points=False))
    with pytest.raises(ExportError) as info:
        export(model, "torchscript", target)
    message = str(info.value)
    assert "\n" not in message and str(target) in message, message
    assert not target.exists()


def test_the_cli_says_it_in_one_line_and_exits_2(tiny_run: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "tlkit", "export", str(tiny_run), "--format", "torchscript", "--out", "/proc/self/model.pt"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1 and "/proc/self/model.pt" in done.stderr, done.stderr


def test_export_leaves_no_temporary_file_when_it_fails(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tlkit.contract.plugin_manager import load_plugins
    from tlkit.saved import export as exporting
    from tlkit.saved.reader import load_model

    def full_disk(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(exporting, "_write_torchscript", full_disk)
    model = load_model(tiny_run, load_plugins(entry_points=False))
    with pytest.raises(ExportError, match="No space left"):
        exporting.export(model, "torchscript", tmp_path / "out" / "model.pt")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_pt2_export_whose_write_fails_midway_is_one_line_not_an_abort(tiny_run: Path, tmp_path: Path) -> None:
    """A disk that fills while the ``.pt2`` is written: torch's zip writer used to abort the process (SIGABRT,
    a C++ stack trace). A file-size limit makes the very write fail (EFBIG, as ENOSPC would) in a child."""
    import subprocess
    import sys

    out = tmp_path / "out" / "model.pt2"
    out.parent.mkdir()
    code = (
        "import resource, sys\n"
        "from tlkit.cli.app import main\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.RLIM_INFINITY))\n"
        "main(['export', sys.argv[1], '--format', 'pt2', '--out', sys.argv[2]])\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tiny_run), str(out)], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1 and str(out) in done.stderr, done.stderr
    assert list(out.parent.iterdir()) == []  # nothing half-written
