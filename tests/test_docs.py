"""The docs are complete and true, and the README stays a short guide.

``docs/plugins.md`` documents every hook in ``tlkit/contract/hookspecs.py`` with a ``### <hook>``
heading, an example and a test (as datasette's ``test_docs.py`` checks), and the page's own code
blocks, pasted into a package exactly as the page lays it out, make a plugin that installs, lists and
runs: someone with only that page can write a working plugin. ``docs/recipes.md`` names every recipe
key and every option of every built-in plugin. The README's "Your own photos" recipe and commands run
offline, as written, on a folder of generated images. The README stays under 16,000 characters and
holds no measured figure beyond the quick start's headline (figures live in ``benchmarks/README.md``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import warnings
import zlib
from pathlib import Path

import pytest
import yaml
from conftest import CLASS_COLOURS, make_image
from plugin_packages import REPO, pip_install
from typer.testing import CliRunner

from tlkit.cli import app as cli
from tlkit.contract import hookspecs
from tlkit.contract.plugin_manager import Plugins, PluginWarning, load_plugins, set_plugins

README = REPO / "README.md"
PLUGINS_PAGE = REPO / "docs" / "plugins.md"
RECIPES_PAGE = REPO / "docs" / "recipes.md"
HOOKS = sorted(name for name, value in vars(hookspecs).items() if hasattr(value, "tlkit_spec"))
README_LIMIT = 16_000


def plugin_section() -> str:
    """The whole plugin-writing page (it was the README's "Writing a plugin" section)."""
    return PLUGINS_PAGE.read_text()


def subsections() -> dict[str, str]:
    """``## heading`` or ``### heading`` -> its text, within the plugin page."""
    parts = re.split(r"^#{2,3} (.+)$", plugin_section(), flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def test_hookspecs_are_found() -> None:
    assert HOOKS == ["register_backbones", "register_datasets", "register_heads", "register_observers"]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_heading_with_a_complete_example(hook: str) -> None:
    sections = subsections()
    assert hook in sections, f"docs/plugins.md has no '### {hook}' heading"
    blocks = code_blocks(sections[hook], "python")
    assert blocks, f"docs/plugins.md '### {hook}' has no python example"
    assert "@tlkit.hookimpl" in blocks[0] and f"def {hook}(register)" in blocks[0], f"the '### {hook}' example does not implement {hook}"


def test_every_hook_heading_names_a_real_hook() -> None:
    stale = [h for h in subsections() if h.startswith("register_") and h not in HOOKS]
    assert not stale, f"docs/plugins.md documents hooks that tlkit/contract/hookspecs.py lacks: {stale}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook: str) -> None:
    tests = (REPO / "tests" / "test_plugins.py").read_text()
    assert re.search(rf"\b{hook}\b", tests), f"tests/test_plugins.py never exercises {hook}"


def _write_page_package(root: Path) -> Path:
    """``tlkit-myplugin/`` exactly as docs/plugins.md lays it out, from the page's own code blocks."""
    sections = subsections()
    (toml,) = code_blocks(plugin_section().split("\n## The hook reference\n", 1)[0], "toml")
    package = root / "tlkit-myplugin"
    (package / "tlkit_myplugin").mkdir(parents=True)
    (package / "pyproject.toml").write_text(toml)
    module = "\n\n".join(code_blocks(sections[hook], "python")[0] for hook in HOOKS)
    (package / "tlkit_myplugin" / "__init__.py").write_text(module)
    return package


def _csv_data(root: Path) -> tuple[Path, Path]:
    for split, count in (("train", 5), ("test", 3)):
        lines = []
        for label, colour in zip(("red", "green"), CLASS_COLOURS):
            for i in range(count):
                make_image(root / "images" / f"{split}-{label}-{i}.png", colour, size=(80, 64), seed=zlib.crc32(f"{split}/{label}/{i}".encode()))
                lines.append(f"images/{split}-{label}-{i}.png,{label}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root / "train.csv", root / "test.csv"


@pytest.mark.slow
def test_the_plugin_page_alone_makes_a_plugin_that_installs_lists_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = pip_install([_write_page_package(tmp_path / "src")], tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("TLKIT_LOAD_PLUGINS", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_plugins()
    assert [str(w.message) for w in caught if issubclass(w.category, PluginWarning)] == []
    status = loaded.status["tlkit-myplugin"]
    assert (status.version, status.hooks) == ("0.1.0", HOOKS)
    assert status.registered == {"backbones": ["tiny_cnn"], "datasets": ["csv_pairs"], "heads": ["my_centroid"], "observers": ["jsonlog"]}

    set_plugins(loaded)
    try:
        runner = CliRunner()
        assert "tlkit-myplugin" in runner.invoke(cli.app, ["plugins"]).output
        assert json.loads(runner.invoke(cli.app, ["backbones", "tiny_cnn", "--json"]).output)[0]["feature_dim"] == 16
        assert "train_csv: str (required)" in runner.invoke(cli.app, ["datasets", "csv_pairs"]).output
        heads = runner.invoke(cli.app, ["heads", "my_centroid"]).output
        assert "temperature: float = 10.0" in heads and "Nearest class mean by cosine similarity." in heads

        # the page's "Testing a plugin" example passes on the page's plugin
        namespace: dict = {}
        exec(compile(code_blocks(subsections()["Testing a plugin: `tlkit.testing`"], "python")[0], "docs/plugins.md", "exec"), namespace)
        (tmp_path / "contract").mkdir()
        namespace["test_myplugin_keeps_the_contract"](tmp_path / "contract")

        train_csv, test_csv = _csv_data(tmp_path / "data")
        recipe = {
            "name": "readme-plugin",
            "dataset": {"name": "csv_pairs", "train_csv": str(train_csv), "test_csv": str(test_csv)},
            "backbone": {"name": "tiny_cnn"},
            "extract": {"workers": 0},
            "head": {"name": "my_centroid", "temperature": 5.0},
            "observers": {"jsonlog": {"path": str(tmp_path / "events.jsonl")}},
        }
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        result = runner.invoke(cli.app, ["run", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out")])
        assert result.exit_code == 0, result.output
    finally:
        set_plugins(None)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["counts"] == {"train": 10, "test": 6} and metrics["feature_dim"] == 16
    assert metrics["test_accuracy"] >= 5 / 6
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert (events[0]["event"], events[-1]) == ("start", {"event": "end", "status": "ok"})


# --- docs/recipes.md: every key ------------------------------------------------------------------


def recipes_section(heading: str) -> str:
    """The text under ``heading`` (a ``##``/``###`` line of docs/recipes.md) up to the next heading of its level or above."""
    text = RECIPES_PAGE.read_text()
    match = re.search(rf"^(#+) {re.escape(heading)}\n", text, flags=re.M)
    assert match, f"docs/recipes.md has no heading '{heading}'"
    level = len(match.group(1))
    end = re.search(rf"^#{{1,{level}}} ", text[match.end() :], flags=re.M)
    return text[match.end() : match.end() + end.start() if end else len(text)]


def _field_names(options: type) -> list[str]:
    return [f.name for f in dataclasses.fields(options)]


def _settings_sections() -> list[tuple[str, type]]:
    from tlkit.extract.pipeline import ImageSettings
    from tlkit.finetune.settings import AugmentSettings, FinetuneSettings
    from tlkit.recipe.loader import ExtractSettings

    return [("## `images`", ImageSettings), ("## `extract`", ExtractSettings), ("## `finetune`", FinetuneSettings), ("### `finetune.augment`", AugmentSettings)]


@pytest.mark.parametrize(("heading", "settings"), _settings_sections(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_key_of_the_engines_sections_is_on_the_recipes_page(heading: str, settings: type) -> None:
    section = recipes_section(heading.split(" ", 1)[1])
    missing = [key for key in _field_names(settings) if f"`{key}`" not in section]
    assert not missing, f"docs/recipes.md '{heading}' lacks {missing} (from {settings.__name__})"


def test_every_top_level_key_is_on_the_recipes_page() -> None:
    from tlkit.recipe.loader import _TOP_KEYS

    section = recipes_section("Top-level keys")
    assert [key for key in _TOP_KEYS if f"| `{key}` |" not in section] == []


def _builtin_choices() -> list[tuple[str, str, type]]:
    plugins = load_plugins(entry_points=False)
    found = []
    for kind, registry in (("dataset", plugins.datasets), ("head", plugins.heads), ("observer", plugins.observers)):
        found += [(kind, spec.name, spec.options) for spec in registry]
    return found


@pytest.mark.parametrize(("kind", "name", "options"), _builtin_choices(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_option_of_every_builtin_plugin_is_on_the_recipes_page(kind: str, name: str, options: type) -> None:
    section = recipes_section(f"`{name}`")
    missing = [key for key in _field_names(options) if f"`{key}`" not in section]
    for key in _field_names(options):  # nested options (dataset.split) have their own table
        nested = next(f.type for f in dataclasses.fields(options) if f.name == key)
        if "SplitOptions" in str(nested):
            from tlkit_plugins.datasets.imagefolder import SplitOptions

            has_heading = re.search(rf"^#+ `{kind}\.{key}`$", RECIPES_PAGE.read_text(), flags=re.M)
            split = recipes_section(f"`{kind}.{key}`") if has_heading else section
            missing += [f"{key}.{sub}" for sub in _field_names(SplitOptions) if f"`{sub}`" not in split]
    assert not missing, f"docs/recipes.md '### `{name}`' lacks {missing}"


def test_builtin_backbones_take_no_options_beyond_what_recipes_md_says() -> None:
    """The page says the built-in backbones take no options besides name and weights; hold it to that."""
    plugins = load_plugins(entry_points=False)
    with_options = sorted({spec.name for spec in plugins.backbones if _field_names(spec.options)})
    assert with_options == [], f"built-in backbones with options docs/recipes.md does not list: {with_options[:5]}"
    assert "take no other options" in recipes_section("`backbone`")


# --- README: a short guide -----------------------------------------------------------------------


def test_the_readme_is_a_guide_of_at_most_16000_characters() -> None:
    size = len(README.read_text(encoding="utf-8"))
    assert size <= README_LIMIT, f"README.md has {size} characters (at most {README_LIMIT}): move reference material to docs/"


MEASURED = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)? ?(?:s|ms|min|img/s|x|MB|GB|KiB|MiB|GiB|%)(?![\w/])")


def readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_readme_has_no_measured_figure_beyond_the_quick_start_headline() -> None:
    text = README.read_text(encoding="utf-8")
    quick = readme_section("Quick start")
    rest = text.replace(quick, "")
    assert MEASURED.findall(rest) == [], "measured figures belong in benchmarks/README.md"
    assert re.findall(r"accuracy (?:of )?(?:about )?\d", rest) == []
    assert len(MEASURED.findall(quick)) <= 1 and len(re.findall(r"\b0\.\d{2,}\b", quick)) <= 1, "one headline accuracy and time"
    assert MEASURED.findall("took 15.1 s, 4.5x, 87.6 img/s, 1,130 MB, 94.5%") != [], "the pattern still catches figures"


# --- README: "Your own photos" runs as written ---------------------------------------------------


def readme_block(marker: str, language: str) -> str:
    match = re.search(rf"<!-- {marker} -->\n```{language}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert match, f"the README's block is marked <!-- {marker} -->"
    return match.group(1)


def test_the_readme_shows_the_my_photos_recipe_as_it_is_in_recipes() -> None:
    shown = yaml.safe_load(readme_block("my-photos-recipe", "yaml"))
    assert shown == yaml.safe_load((REPO / "recipes" / "my-photos.yaml").read_text())
    assert shown["name"] != "hymenoptera" and "download" not in shown["dataset"] and shown["dataset"]["split"]
    assert shown["backbone"]["name"] == "efficientnet_lite0" and shown["head"]["name"] != "linear"
    assert "my-photos-recipe" in readme_section("Your own photos") and "my-photos-commands" in readme_section("Your own photos")


def _photo_folder(root: Path) -> None:
    """``root/photos/<class>/`` with a handful of generated photos per class, as a user would have."""
    for index, name in enumerate(("cats", "dogs")):
        for i in range(6):
            make_image(root / "photos" / name / f"IMG_{i:04d}.jpg", CLASS_COLOURS[index], size=(96, 72), seed=100 * index + i)


def test_the_readme_your_own_photos_commands_run_offline_as_written(plugins: Plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    commands = [shlex.split(line, comments=True) for line in readme_block("my-photos-commands", "bash").splitlines() if line.strip()]
    assert commands and all(command[0] == "tlkit" for command in commands)
    (tmp_path / "recipes").mkdir()
    shutil.copy(REPO / "recipes" / "my-photos.yaml", tmp_path / "recipes")  # the repository root, as the README says
    _photo_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TLKIT_OFFLINE", "1")
    for command in commands:
        with pytest.raises(SystemExit) as info:
            cli.main(command[1:])
        assert info.value.code in (0, None), f"{shlex.join(command)} failed:\n{capsys.readouterr().err}"
    run = tmp_path / "runs" / "my-photos"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["counts"]["train"] + metrics["counts"]["test"] == 12 and metrics["counts"]["test"] >= 2
    assert [line.split(",")[0] for line in (run / "split.csv").read_text().splitlines()].count("test") == metrics["counts"]["test"]
    assert json.loads((run / "classes.json").read_text()) == ["cats", "dogs"]
    assert (tmp_path / "runs" / "my-photos-knn" / "run.json").is_file()


# --- README: "From Python" runs as written, with public names only --------------------------------


def test_the_readme_python_block_trains_predicts_and_exports_with_public_names_only(plugins: Plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Issue 20's must-hold 1: a notebook-style script, no YAML file, that trains on a folder, prints the
    metrics, predicts two images and exports ONNX, using only names in ``tlkit.__all__``."""
    from test_public_api import private_uses

    block = readme_block("python-api", "python")
    assert "yaml" not in block.lower() and "tlkit.fit(" in block and ".predict(" in block and '.export("onnx")' in block
    assert private_uses(block, "README.md python-api") == []
    _photo_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TLKIT_OFFLINE", "1")
    exec(compile(block, "README.md", "exec"), {"__name__": "__main__"})
    lines = capsys.readouterr().out.splitlines()
    run = Path("runs") / "photos-py"
    metrics = json.loads((run / "metrics.json").read_text())
    assert lines[0] == f"{metrics['test_accuracy']} {run}"
    assert metrics["counts"]["train"] + metrics["counts"]["test"] == 12
    predicted = [line.split() for line in lines[1:3]]
    assert [p[0] for p in predicted] == ["photos/cats/IMG_0001.jpg", "photos/dogs/IMG_0002.jpg"]
    assert all(p[1] in ("cats", "dogs") and 0.5 <= float(p[2]) <= 1.0 for p in predicted)
    assert lines[3] == str(run / "model.onnx") and (run / "model.onnx").stat().st_size > 0
    assert len(lines) == 4, "the block prints what it says and nothing else"


# --- the robustness table: its count and its tests ---------------------------------------------------

ROBUSTNESS_PAGE = REPO / "docs" / "robustness.md"
TABLE_HEADER = "| promise | test |\n|---|---|\n"


def _robustness_rows() -> list[str]:
    text = ROBUSTNESS_PAGE.read_text(encoding="utf-8")
    table = text.split(TABLE_HEADER, 1)[1]
    rows = []
    for line in table.splitlines():
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def _test_references(row: str) -> list[tuple[str, str | None]]:
    """``(file, test name or None)`` for each test the row's last cell names; ``::name`` continues the file before it."""
    cell = row.rstrip().rstrip("|").rsplit("|", 1)[1]
    found: list[tuple[str, str | None]] = []
    current = ""
    for ref in re.findall(r"`([^`]+)`", cell):
        if "::" not in ref and not ref.endswith(".py"):
            continue  # a word in backticks (`unshare`), not a test
        file, _, name = ref.partition("::")
        if file:
            current = Path(file).name
        elif not current:
            raise AssertionError(f"'{ref}' continues no file: {row[:80]}")
        found.append((current, name.split("[", 1)[0] or None))
    return found


def _test_names(module: Path) -> set[str]:
    import ast

    tree = ast.parse(module.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")}


def test_the_robustness_table_states_how_many_hostile_cases_it_holds() -> None:
    text = ROBUSTNESS_PAGE.read_text(encoding="utf-8")
    stated = re.search(r"^(\d+) hostile cases, each held by a test", text, re.MULTILINE)
    assert stated, "docs/robustness.md: no line 'N hostile cases, each held by a test' above the table"
    assert int(stated.group(1)) == len(_robustness_rows()) > 0


def test_every_test_the_robustness_table_names_exists() -> None:
    tests = REPO / "tests"
    missing = []
    for row in _robustness_rows():
        references = _test_references(row)
        assert references, f"a row names no test: {row[:80]}"
        for file, name in references:
            module = tests / file
            if not module.is_file():
                missing.append(file)
            elif name is not None and name not in _test_names(module):
                missing.append(f"{file}::{name}")
    assert not missing, f"docs/robustness.md names tests that do not exist: {missing}"
