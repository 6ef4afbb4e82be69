"""``tlkit show DATA|RECIPE``: contact sheets of a data set, before any backbone is built.

DATA is an image folder (``train/`` with ``test/`` or ``val/``, or a flat folder of class folders) or
a recipe, whose data set loader lists the images exactly as a run would. Nothing is extracted or
trained; the images are only decoded small. The output folder is written to a staging folder and
moved into place, so it appears complete or not at all.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tlkit.contract.options import validate_options
from tlkit.contract.plugin_manager import Plugins
from tlkit.contract.specs import LoadedDataset
from tlkit.errors import DataError, OutputError
from tlkit.outputs import contact_sheet
from tlkit.outputs.contact_sheet import ClassSheet, SheetImage
from tlkit.util.atomic import current_umask, publish_folder

RECIPE_SUFFIXES = (".yaml", ".yml", ".json")
PAGE = "show.html"


@dataclass(frozen=True)
class Shown:
    """What ``show`` wrote: the folder, its page, one PNG per class, and the classes with their counts."""

    out: Path
    page: Path
    pngs: tuple[Path, ...]
    sheets: tuple[ClassSheet, ...]
    left_out: int


def load_data(data: Path, plugins: Plugins, overrides: Sequence[str] = ()) -> tuple[str, LoadedDataset]:
    """A recipe's data set (its loader) or an image folder's (the built-in ``imagefolder`` loader), as a run lists it."""
    if data.suffix.lower() in RECIPE_SUFFIXES and data.is_file():
        from tlkit.recipe.loader import load_recipe

        recipe = load_recipe(data, plugins, overrides)
        return recipe.name, recipe.dataset.spec.load(recipe.dataset.options)
    if not data.is_dir():
        raise DataError(f"{data}: not an image folder nor a recipe file (.yaml/.yml/.json); give a folder of class folders or a recipe")
    spec = plugins.datasets.get("imagefolder")
    if (data / "train").is_dir():
        test = next((name for name in ("test", "val") if (data / name).is_dir()), None)
        options = {"root": str(data)} | ({"test": test} if test else {"split": {"test_fraction": 0.2, "seed": 0}})
        return data.name, spec.load(validate_options(spec.options, options, "dataset"))
    flat = spec.load(validate_options(spec.options, {"root": str(data), "split": {"test_fraction": 0.2, "seed": 0}}, "dataset"))
    everything = tuple(flat.splits["train"]) + tuple(flat.splits["test"])  # no split on disk: one "images" row
    return data.name, LoadedDataset(classes=flat.classes, splits={"images": everything}, notes=flat.notes)


def show(data: Path, out: Path | None, plugins: Plugins, *, per_class: int = 8, seed: int = 0, overrides: Sequence[str] = ()) -> Shown:
    """Sample, draw and write the contact sheets of ``data`` into ``out`` (default ``runs/show-<name>``)."""
    name, dataset = load_data(Path(data), plugins, overrides)
    splits = {
        split: [(SheetImage(None if s.member is not None else Path(s.path), _shown_name(s.path)), int(s.label)) for s in samples]
        for split, samples in dataset.splits.items()
    }
    sheets = contact_sheet.pick(list(dataset.classes), splits, per_class, seed)
    left_out = max(0, len(dataset.classes) - len(sheets))
    target = Path(out) if out is not None else Path("runs") / f"show-{name}"
    _check_replaceable(target)
    heading = f"{len(dataset.classes)} classes, up to {per_class} images per class and split (seed {seed})"
    staging: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        staging.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would leave the published folder private
        pngs = tuple(contact_sheet.sheet_png(sheet, staging / contact_sheet.file_name(i, sheet.name)) for i, sheet in enumerate(sheets))
        (staging / PAGE).write_text(contact_sheet.page_html(f"tlkit show: {name}", contact_sheet.sheets_html(sheets, heading, left_out)), encoding="utf-8")
        publish_folder(staging, target)
    except OSError as exc:
        raise OutputError(f"cannot write the contact sheets to {target} ({exc.strerror or exc}); choose another --out") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)  # gone already once published
    return Shown(out=target, page=target / PAGE, pngs=tuple(target / p.name for p in pngs), sheets=tuple(sheets), left_out=left_out)


def _shown_name(path: Path | str) -> str:
    """The file's name with its class folder (``ants/0013035.jpg``): enough to find it, short enough for a caption."""
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else str(path)


_OURS = re.compile(r"^(\d{2,}-[A-Za-z0-9._-]*\.png|" + re.escape(PAGE) + ")$")


def _check_replaceable(target: Path) -> None:
    """Refuse an ``--out`` that holds anything ``show`` did not write: replacing the folder would delete it."""
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise OutputError(f"--out {target} exists and is not a folder of contact sheets; choose another --out")
    foreign = sorted(entry.name for entry in target.iterdir() if not _OURS.match(entry.name) or not entry.is_file() or entry.is_symlink())
    if foreign:
        raise OutputError(f"--out {target} holds files tlkit show did not write ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
                          "they would be deleted: choose another --out")
