"""``imagefolder``: a root with a train and a test sub-folder, one folder per class inside each.

Files with the usual photo extensions (torchvision's list, as its ``ImageFolder``: so ``.gif`` is not
one, which keeps the ants/bees placeholder ``imageNotFound.gif`` out as in the reference) are images;
everything else (hidden files, READMEs, links that lead nowhere or in a circle) is left out and named
in a note. Whether an image file actually decodes is the engine's
business (``dataset.on_bad_image``), not the loader's. Test classes must be train classes;
a train class with no test images is allowed and noted (its test recall simply cannot be measured).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tlkit
from tlkit.archives import fetch
from tlkit.errors import DataError
from tlkit.files import EXTENSIONS, walk_images


@dataclass(frozen=True)
class ImageFolderOptions:
    root: str = field(metadata={"help": "folder holding the train and test sub-folders (relative to the working directory)"})
    train: str = field(default="train", metadata={"help": "name of the training sub-folder"})
    test: str = field(default="val", metadata={"help": "name of the test sub-folder"})
    download: str | None = field(default=None, metadata={"help": "archive URL fetched when root is missing"})
    sha256: str | None = field(default=None, metadata={"help": "expected sha256 of the downloaded archive"})


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> tuple[list[Path], list[Path]]:
    """Image files under ``class_dir`` (recursively, following links once), and the other files left out."""
    found = walk_images(class_dir)
    return found.images, found.skipped


def load_imagefolder(options: ImageFolderOptions) -> tlkit.LoadedDataset:
    root = Path(options.root).expanduser()
    if not root.is_dir():
        if options.download:
            fetch(options.download, root, sha256=options.sha256)
        else:
            raise DataError(f"data folder {root} does not exist; set dataset.root to a folder with '{options.train}' and '{options.test}' sub-folders")
    split_dirs = {"train": root / options.train, "test": root / options.test}
    for split, path in split_dirs.items():
        if not path.is_dir():
            key = "dataset.train" if split == "train" else "dataset.test"
            raise DataError(f"{path} does not exist; {root} needs a '{path.name}' sub-folder (or set {key})")
    classes = _class_dirs(split_dirs["train"])
    if not classes:
        raise DataError(f"{split_dirs['train']} has no class folders; put one folder of images per class in it")
    test_classes = _class_dirs(split_dirs["test"])
    foreign = [c for c in test_classes if c not in classes]
    if foreign:
        raise DataError(
            f"{split_dirs['test']} has classes that {split_dirs['train']} lacks ({', '.join(foreign)}); "
            "the class folders of train and test must agree"
        )
    splits: dict[str, list[tlkit.Sample]] = {}
    notes: list[str] = []
    for split, split_dir in split_dirs.items():
        samples: list[tlkit.Sample] = []
        skipped: list[Path] = []
        for label, name in enumerate(classes):
            class_dir = split_dir / name
            if not class_dir.is_dir():
                notes.append(f"{split}: class '{name}' has no folder in {split_dir}")
                continue
            files, left_out = _image_files(class_dir)
            skipped.extend(left_out)
            if not files:
                notes.append(f"{split}: class '{name}' has no images")
            samples.extend(tlkit.Sample(path, label) for path in files)
        if skipped:
            shown = ", ".join(str(p.relative_to(split_dir)) for p in skipped[:4]) + (", ..." if len(skipped) > 4 else "")
            notes.append(
                f"{split}: left out {len(skipped)} file{'s' if len(skipped) != 1 else ''} "
                f"(hidden, not an image by name, or a broken link): {shown}"
            )
        if not samples:
            raise DataError(f"{split_dir} holds no images ({', '.join(EXTENSIONS)})")
        splits[split] = samples
    return tlkit.LoadedDataset(classes=tuple(classes), splits=splits, notes=tuple(notes))


@tlkit.hookimpl
def register_datasets(register: Any) -> None:
    register(
        tlkit.DatasetSpec(
            name="imagefolder",
            load=load_imagefolder,
            description="a root with train/ and test/ sub-folders, one folder of images per class",
            options=ImageFolderOptions,
        )
    )
