"""The run directory: written in a staging folder beside it and renamed into place when complete.

A run that fails or is interrupted never leaves a directory that looks finished: until the final
rename, everything lives in ``<out>.partial-*`` (kept, and named in the error, so nothing is lost).
An existing ``--out`` that holds a previous tlkit run is replaced only once the new one is complete;
any other non-empty folder is refused before work starts.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from tlkit.errors import OutputError

MARKER = "run.json"


def default_out_dir(recipe_name: str, base: Path = Path("runs")) -> Path:
    return base / f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunDirectory:
    """Collects a run's files in a staging folder; :meth:`commit` moves them to ``final``."""

    def __init__(self, final: Path) -> None:
        self.final = final
        if final.exists():
            if not final.is_dir():
                raise OutputError(f"--out {final} is a file; choose a folder")
            if any(final.iterdir()) and not (final / MARKER).is_file():
                raise OutputError(f"--out {final} is a non-empty folder that is not a tlkit run; choose another --out")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{final.name}.partial-"))
        except OSError as exc:
            raise OutputError(f"cannot write the run directory in {final.parent} ({exc.strerror}); choose another --out") from None

    def write_json(self, name: str, data: Any) -> Path:
        return self._write_text(name, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")

    def write_yaml(self, name: str, data: Any) -> Path:
        return self._write_text(name, yaml.safe_dump(data, sort_keys=False))

    def write_tensors(self, name: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
        target = self.path / name
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(target), metadata=dict(metadata or {}))
        return target

    def file(self, name: str) -> Path:
        """A path inside the staging folder for writers that need one (plots, CSV)."""
        return self.path / name

    def _write_text(self, name: str, text: str) -> Path:
        target = self.path / name
        target.write_text(text, encoding="utf-8")
        return target

    def commit(self, marker: Mapping[str, Any]) -> Path:
        """Write the completion marker and move the run into place (replacing a previous run there)."""
        self.write_json(MARKER, dict(marker))
        previous: Path | None = None
        if self.final.exists():
            previous = self.final.with_name(f"{self.final.name}.old-{os.getpid()}")
            os.replace(self.final, previous)
        os.replace(self.path, self.final)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
