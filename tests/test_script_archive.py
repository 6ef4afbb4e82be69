"""tch-rs / libtorch ``.ot`` weights (TorchScript-format zips) load into ``resnet18`` without running code.

tch-rs ``VarStore::save`` writes one ``OutputArchive::write(name, tensor)`` per variable, with the
dots of torchvision's parameter names replaced by ``|``, and saves the archive as a TorchScript
module. The test writes such an archive itself: a real TorchScript module holding exactly those
named tensors (no BatchNorm step counters, as tch-rs has none), saved with ``torch.jit.save``.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision.models import resnet18

from tlkit.contract.weights_request import WeightsRequest
from tlkit.errors import WeightsError
from tlkit.sources.script_archive import is_script_archive, read_named_tensors
from tlkit.sources.weights import load_state_dict


def write_tch_archive(state: dict[str, torch.Tensor], path: Path) -> Path:
    """What tch-rs ``Tensor::save_multi`` writes: one parameter per tensor, ``.`` written as ``|``."""
    holder = torch.nn.Module()
    for name, tensor in state.items():
        holder.register_parameter(name.replace(".", "|"), torch.nn.Parameter(tensor.clone(), requires_grad=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, tch-rs files are not
        torch.jit.save(torch.jit.script(holder), str(path))
    return path


@pytest.fixture(scope="module")
def tch_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    state = {k: v for k, v in resnet18().state_dict().items() if not k.endswith("num_batches_tracked")}
    return {k: v + torch.rand_like(v) for k, v in state.items()}  # BN's ones and zeros become weights worth telling apart


@pytest.fixture(scope="module")
def tch_file(tmp_path_factory: pytest.TempPathFactory, tch_state: dict[str, torch.Tensor]) -> Path:
    return write_tch_archive(tch_state, tmp_path_factory.mktemp("tch") / "resnet18.ot")


def test_the_archive_is_what_tch_rs_writes(tch_file: Path) -> None:
    with zipfile.ZipFile(tch_file) as records:
        names = records.namelist()
    assert "resnet18/data.pkl" in names and "resnet18/constants.pkl" in names and "resnet18/data/0" in names
    assert is_script_archive(tch_file)
    with pytest.raises(RuntimeError), warnings.catch_warnings():  # the reason a reader of its own is needed
        warnings.simplefilter("ignore", UserWarning)
        torch.load(tch_file, weights_only=True)


def test_named_tensors_come_back_with_their_dots(tch_file: Path, tch_state: dict[str, torch.Tensor]) -> None:
    tensors = read_named_tensors(tch_file)
    assert set(tensors) == set(tch_state)
    assert all(torch.equal(tensors[k], tch_state[k]) and tensors[k].dtype == tch_state[k].dtype for k in tch_state)


def test_resnet18_loads_the_ot_file_relative_to_the_working_directory(
    plugins: Any, tch_file: Path, tch_state: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tch_file.parent)
    spec = plugins.backbones.get("resnet18")
    request = WeightsRequest.parse("resnet18.ot")  # what --set backbone.weights=resnet18.ot hands over
    loaded = spec.build(request, spec.options()).model.state_dict()
    torch.manual_seed(8)  # another draw than the file's
    random = spec.build(WeightsRequest.random(), spec.options()).model.state_dict()
    assert set(loaded) == set(random)
    differs = [k for k in tch_state if k in loaded and not torch.equal(loaded[k], random[k])]
    assert all(torch.equal(loaded[k], tch_state[k]) for k in tch_state if k in loaded)
    assert sorted(differs) == sorted(k for k in tch_state if not k.startswith("fc."))  # all from the file, none random
    assert "fc.weight" not in loaded  # the classifier is cut off either way


def test_a_pickle_with_code_inside_an_archive_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.ot"
    with zipfile.ZipFile(path, "w") as records:
        records.writestr("evil/data.pkl", pickle.dumps({"conv1|weight": Payload()}, protocol=2))
        records.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(WeightsError, match=r"evil\.ot was refused: unsupported GLOBAL (posix|os)\.system"):
        load_state_dict(path)
    assert not marker.exists()


def test_a_damaged_archive_names_the_file(tch_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "short.ot"
    with zipfile.ZipFile(tch_file) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, data[: len(data) // 2] if info.filename == "resnet18/data/0" else data)
    with pytest.raises(WeightsError, match=r"short\.ot .*shorter than its 9408 elements"):
        load_state_dict(path)


def test_a_scripted_model_gives_its_state_dict(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model), str(tmp_path / "model.pt"))
    tensors = load_state_dict(tmp_path / "model.pt")
    expected = model.state_dict()
    assert set(tensors) == set(expected) and all(torch.equal(tensors[k], v) for k, v in expected.items())


LIBTORCH_SAVE_MULTI = r"""
#include <torch/extension.h>
#include <torch/serialize/archive.h>
// tch-rs torch_api.cpp at_save_multi, verbatim in substance
void save_multi(std::vector<torch::Tensor> tensors, std::vector<std::string> names, std::string filename) {
  torch::serialize::OutputArchive archive;
  for (size_t i = 0; i < tensors.size(); ++i) archive.write(names[i], tensors[i], /*buffer=*/false);
  archive.save_to(filename);
}
"""


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TLKIT_TEST_LIBTORCH") != "1", reason="compiles a libtorch extension (about 2 minutes); set TLKIT_TEST_LIBTORCH=1")
def test_an_archive_from_libtorch_itself(tmp_path: Path, tch_state: dict[str, torch.Tensor]) -> None:
    from torch.utils.cpp_extension import load_inline

    ext = load_inline("tlkit_save_multi", cpp_sources=LIBTORCH_SAVE_MULTI, functions=["save_multi"], build_directory=str(tmp_path), extra_cflags=["-O0"])
    path = tmp_path / "resnet18.ot"
    ext.save_multi(list(tch_state.values()), [k.replace(".", "|") for k in tch_state], str(path))
    tensors = load_state_dict(path)
    assert set(tensors) == set(tch_state) and all(torch.equal(tensors[k], v) for k, v in tch_state.items())


# --- hostile archives: bounded in depth and in memory ---


def _nested_dicts(depth: int) -> bytes:
    """A protocol-2 pickle of ``{"a": {"a": ... {}}}`` ``depth`` deep, written opcode by opcode (pickle itself would recurse)."""
    key = b"X\x01\x00\x00\x00a"
    return b"\x80\x02" + (b"}" + key) * depth + b"}" + b"s" * depth + b"."


def test_a_pickle_nested_100000_deep_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.ot"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as records:
        records.writestr("deep/data.pkl", _nested_dicts(100_000))
        records.writestr("deep/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(WeightsError, match=r"deep\.ot .*nested") as info:
        load_state_dict(path)
    assert "\n" not in str(info.value)


class _StorageRef:
    def __init__(self, numel: int) -> None:
        self.numel = numel


class _Tensor:
    def __init__(self, numel: int) -> None:
        self.numel = numel

    def __reduce__(self) -> tuple[Any, ...]:
        from collections import OrderedDict

        return (torch._utils._rebuild_tensor_v2, (_StorageRef(self.numel), 0, (self.numel,), (1,), False, OrderedDict()))


class _ArchivePickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _StorageRef):
            return ("storage", torch.FloatStorage, "0", "cpu", obj.numel)
        return None


def _bomb(path: Path, numel: int, record_bytes: int) -> Path:
    """An archive whose one tensor of ``numel`` floats has a record of ``record_bytes`` zeros, deflated (a 2 GiB record is ~2 MB)."""
    import io

    buffer = io.BytesIO()
    _ArchivePickler(buffer, protocol=2).dump({"fc|weight": _Tensor(numel)})
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as records:
        records.writestr("bomb/data.pkl", buffer.getvalue())
        records.writestr("bomb/constants.pkl", pickle.dumps((), protocol=2))
        with records.open("bomb/data/0", "w", force_zip64=True) as record:
            for _ in range(record_bytes >> 20):
                record.write(zeros)
    return path


def test_a_small_crafted_archive_reads_back(tmp_path: Path) -> None:
    path = _bomb(tmp_path / "ok.ot", 1 << 18, 1 << 20)  # the crafting is right: 1 MiB of zeros is a tensor
    assert read_named_tensors(path)["fc.weight"].shape == (1 << 18,)


_PEAK = '''
import resource, sys
from tlkit.errors import WeightsError
from tlkit.sources.weights import load_state_dict
try:
    load_state_dict(sys.argv[1])
except WeightsError as exc:
    print("refused:", exc)
else:
    print("loaded")
# VmHWM: this process's own peak (ru_maxrss also counts the parent that forked it, vfork + exec)
print("peak_kib", int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]))
'''


@pytest.mark.parametrize("numel", [2**29, 2**10], ids=["claims-2GiB", "claims-4KiB"])
def test_a_2_gib_deflated_record_is_refused_under_1_5_gb(tmp_path: Path, numel: int) -> None:
    import subprocess
    import sys

    path = _bomb(tmp_path / "bomb.ot", numel, 2 * 2**30)
    assert path.stat().st_size < 16 * 2**20
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, env=env, timeout=600, check=False)
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert done.returncode == 0, done.stderr[-2000:]
    peak_gb = int(lines["peak_kib"]) * 1024 / 1e9
    assert peak_gb < 1.5, peak_gb
    if numel == 2**29:
        assert "refused:" in lines and "bomb.ot" in lines["refused:"], done.stdout
    else:  # only the 4 KiB the tensor needs are inflated
        assert "loaded" in done.stdout or "refused:" in lines
