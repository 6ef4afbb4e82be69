"""``imagefolder``: a root with a train and a test sub-folder, one folder per class inside each.

Or, with ``split: {test_fraction: 0.2, seed: 0}``, one folder of class folders (``photos/<class>/``,
or a root holding ``train/`` only) split here: stratified (each class gives about that fraction to
test, at least one image, never its only one), deterministic (each file's place depends only on the
seed and its path inside the class folder, so adding photos later moves few old ones), and recorded
(the run directory's ``split.csv`` says which file went where).

Files with the usual photo extensions (torchvision's list, as its ``ImageFolder``: so ``.gif`` is not
one, which keeps the ants/bees placeholder ``imageNotFound.gif`` out as in the reference) are images;
everything else (hidden files, READMEs, links that lead nowhere or in a circle) is left out and named
in a note. Whether an image file actually decodes is the engine's
business (``images.on_bad_image``), not the loader's. Test classes must be train classes;
a train class with no test images is allowed and noted (its test recall simply cannot be measured).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from annotated_types import Ge, Gt, Lt
from pydantic import ConfigDict

import tlkit
from tlkit.errors import DataError


@dataclass(frozen=True)
class SplitOptions:
    __pydantic_config__ = ConfigDict(extra="forbid")  # a misspelt key is an error, not ignored

    test_fraction: Annotated[float, Gt(0), Lt(1)] = field(default=0.2, metadata={"help": "share of each class's images held out as test"})
    seed: Annotated[int, Ge(0)] = field(default=0, metadata={"help": "which images are held out (same seed, same split)"})


@dataclass(frozen=True)
class ImageFolderOptions:
    root: str = field(metadata={"help": "folder holding the train and test sub-folders (relative to the working directory)"})
    train: str = field(default="train", metadata={"help": "name of the training sub-folder"})
    test: str = field(default="val", metadata={"help": "name of the test sub-folder"})
    download: str | None = field(default=None, metadata={"help": "archive URL fetched when root is missing"})
    sha256: str | None = field(default=None, metadata={"help": "expected sha256 of the downloaded archive"})
    split: SplitOptions | None = field(
        default=None, metadata={"help": "{test_fraction, seed}: split one folder of class folders (or root/train alone) into train and test here"}
    )


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> tuple[list[Path], list[Path]]:
    """Image files under ``class_dir`` (recursively, following links once), and the other files left out."""
    found = tlkit.walk_images(class_dir)
    return found.images, found.skipped


def _scan(split: str, split_dir: Path, classes: list[str], notes: list[str]) -> list[tlkit.Sample]:
    """The labelled images of one folder of class folders; what was left out goes into ``notes``."""
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
        raise DataError(f"{split_dir} holds no images ({', '.join(tlkit.IMAGE_EXTENSIONS)})")
    return samples


def _shown(root: Path) -> str:
    """The folder as given and, when relative, what it was resolved against (the working directory, as any path)."""
    return str(root) if root.is_absolute() else f"{root} (relative to the working directory {Path.cwd()})"


def _root(options: ImageFolderOptions) -> Path:
    root = Path(options.root).expanduser()
    if root.exists() and not root.is_dir():  # say what it is, not that it is missing
        raise DataError(f"data folder {_shown(root)} is a file, not a folder; set dataset.root to the folder holding '{options.train}' and '{options.test}'")
    if not root.is_dir():
        if options.download:
            tlkit.fetch_archive(options.download, root, sha256=options.sha256)
        elif options.split is not None:
            raise DataError(f"data folder {_shown(root)} does not exist; set dataset.root to a folder with one sub-folder of images per class")
        else:
            raise DataError(f"data folder {_shown(root)} does not exist; set dataset.root to a folder with '{options.train}' and '{options.test}' sub-folders")
    return root


def load_imagefolder(options: ImageFolderOptions) -> tlkit.LoadedDataset:
    root = _root(options)
    if options.split is not None:
        return _load_and_split(root, options, options.split)
    split_dirs = {"train": root / options.train, "test": root / options.test}
    for split, path in split_dirs.items():
        if not path.is_dir():
            key = "dataset.train" if split == "train" else "dataset.test"
            raise DataError(
                f"{path} does not exist; {root} needs a '{path.name}' sub-folder (or set {key}, "
                "or dataset.split: {test_fraction: 0.2} to split one folder of class folders)"
            )
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
    notes: list[str] = []
    splits = {split: _scan(split, split_dir, classes, notes) for split, split_dir in split_dirs.items()}
    return tlkit.LoadedDataset(classes=tuple(classes), splits=splits, notes=tuple(notes))


def _split_source(root: Path, options: ImageFolderOptions) -> Path:
    """The folder of class folders to split: ``root/train`` when it is there alone, else ``root``."""
    train_dir, test_dir = root / options.train, root / options.test
    if train_dir.is_dir() and test_dir.is_dir():
        raise DataError(
            f"{root} already has '{options.train}' and '{options.test}' sub-folders; remove dataset.split to use them, "
            "or set dataset.root to one folder of class folders"
        )
    return train_dir if train_dir.is_dir() else root


def split_samples(
    samples: list[tlkit.Sample], source: Path, classes: list[str], split: SplitOptions
) -> tuple[list[tlkit.Sample], list[tlkit.Sample], list[str]]:
    """(train, test, classes with a single image): tlkit's one seeded holdout rule (``tlkit.holdout_split``).

    Each file's key is its path inside its class folder, so its place depends only on the seed and that
    path (not the file count, not the walk order). Both lists keep the files' original order.
    """
    keys = [s.path.relative_to(source / classes[s.label]).as_posix() for s in samples]
    held = tlkit.holdout_split(keys, [s.label for s in samples], split.test_fraction, split.seed)
    train = [s for i, s in enumerate(samples) if i not in held.test]
    return train, [s for i, s in enumerate(samples) if i in held.test], [classes[c] for c in held.single_image_classes]


def _load_and_split(root: Path, options: ImageFolderOptions, split: SplitOptions) -> tlkit.LoadedDataset:
    source = _split_source(root, options)
    classes = _class_dirs(source)
    if not classes:
        raise DataError(f"{source} has no class folders; put one folder of images per class in it (dataset.split splits them)")
    notes: list[str] = []
    train, test, singles = split_samples(_scan("data", source, classes, notes), source, classes, split)
    if not test:
        raise DataError(f"{source}: no class has two images, so none can be held out as test; add images or give a test folder")
    notes.append(
        f"split {source}: {split.test_fraction:.0%} of each class held out as test (seed {split.seed}): "
        f"train {len(train)}, test {len(test)} (which file went where: split.csv in the run directory)"
    )
    notes.extend(f"class '{name}' has a single image: it stays in train (its test recall cannot be measured)" for name in singles)
    return tlkit.LoadedDataset(classes=tuple(classes), splits={"train": train, "test": test}, notes=tuple(notes))


@tlkit.hookimpl
def register_datasets(register: Any) -> None:
    register(
        tlkit.DatasetSpec(
            name="imagefolder",
            load=load_imagefolder,
            description="a root with train/ and test/ sub-folders, one folder of images per class (or one folder of class folders with split)",
            options=ImageFolderOptions,
        )
    )
