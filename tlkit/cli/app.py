"""The ``tlkit`` command: parse, call the engine, print. Errors become one line and exit code 2.

Only typer and the standard library are imported at start: torch, timm and the plugins load inside
the commands that need them, so ``tlkit --help`` and ``tlkit --version`` answer at once.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tlkit import __version__
from tlkit.cli import console
from tlkit.cli.usage import Command
from tlkit.errors import DataError, TlkitError

_CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="tlkit",
    help="Transfer learning on small image data sets: pretrained backbones, small heads, YAML recipes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: flags shown as flags, no "<bool>" type column
    context_settings=_CONTEXT,
)

_state = {"debug": os.environ.get("TLKIT_DEBUG", "") not in ("", "0")}

_JSON_HELP = "Print JSON instead of a table."


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"tlkit {__version__}\n")  # plain: rich is not needed (nor imported) for this
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit.")
    ] = False,
) -> None:
    """tlkit: a strong transfer-learning baseline on your own folder of images, in one command."""
    if debug:
        _state["debug"] = True


def _plugins() -> Any:
    from tlkit.contract.plugin_manager import get_plugins

    return get_plugins()


@app.command(cls=Command)
def run(
    recipe: Annotated[Path, typer.Argument(metavar="RECIPE", help="YAML recipe, e.g. recipes/hymenoptera.yaml.")],
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", metavar="KEY=VALUE", help="Override a recipe value, e.g. --set head.name=logreg (repeatable)."),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", metavar="DIR", help="Run directory (default runs/<recipe>-<timestamp>/).")
    ] = None,
    resume: Annotated[
        Optional[Path], typer.Option("--resume", metavar="RUN_DIR_OR_PARTIAL", help="Continue an interrupted fine-tuning run: its --out or .partial-* folder.")
    ] = None,
) -> None:
    """Run a recipe: extract features with the backbone, train the head, evaluate, save the run."""
    from tlkit.recipe.loader import load_recipe
    from tlkit.run import engine

    with warnings.catch_warnings(record=True) as held:  # load warnings are said after the recipe is read
        warnings.simplefilter("default")
        plugins = _plugins()
    try:
        recipe_obj = load_recipe(recipe, plugins, set_ or [])
    except TlkitError as exc:
        _say_warnings(held, unless_about=str(exc))  # the error already names the plugin it cannot use: one line
        raise
    _say_warnings(held)
    try:
        result = engine.run(recipe_obj, out, console.ConsoleObserver(), resume=resume)  # one process, or this rank's part under torchrun/srun
    except KeyboardInterrupt as exc:
        # typer turns Ctrl-C into a silent exit 130; say what stopped and what was kept first.
        console.print_error(str(exc) or "interrupted; nothing was written")
        raise typer.Exit(getattr(exc, "exit_code", 130)) from None  # 143 after SIGTERM (tlkit.run.signals)
    except TlkitError as exc:
        from tlkit.cli.listings import offline_hint

        exc.args = (f"{exc}{offline_hint(exc, plugins, recipe_obj.backbone.name)}", *exc.args[1:])
        raise
    if result.rank == 0:  # the rank that wrote the run shows it; every rank says the ranks' line
        console.print_run_summary(recipe_obj, result)
    if result.ranks_line:
        console.out.print(result.ranks_line, highlight=False)


@app.command(cls=Command)
def predict(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A finished run directory (the --out of tlkit run).")],
    images: Annotated[list[Path], typer.Argument(metavar="IMAGES", help="Image files or folders (searched recursively).")],
    top_k: Annotated[int, typer.Option("--top-k", metavar="K", min=1, help="Show the K most probable classes of each image.")] = 1,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object per line instead of a table.")] = False,
    csv_: Annotated[Optional[Path], typer.Option("--csv", metavar="FILE", help="Also write the predictions to FILE as CSV.")] = None,
    device: Annotated[str, typer.Option("--device", metavar="auto|cpu|cuda", help="Where the backbone runs.")] = "auto",
) -> None:
    """Classify images with a saved run: path, class and probability for each."""
    from tlkit.outputs.predictions import top_rows
    from tlkit.saved.reader import image_files, load_model
    from tlkit.saved.reader import predict as predict_files

    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"'{device}' is not auto, cpu or cuda", param_hint="--device")
    model = load_model(run_dir, _plugins())
    files = image_files(images)
    with console.progress("classifying", len(files), unit="img", quiet=len(files) <= model.batch_size) as advance:
        result = predict_files(model, files, device=device, on_batch=advance)
    rows = top_rows(result.paths, result.top(top_k), model.classes)
    if csv_ is not None:
        console.write_csv(csv_, rows, result.bad, top_k)
    if json_:
        for row in rows:
            console.print_json_line(console.prediction_json(row, top_k))
        for path, reason in result.bad:
            console.print_json_line(console.skipped_json(path, reason))
    else:
        console.print_predictions(rows, result.bad, top_k)
    if not result.paths:
        raise DataError(f"none of the {len(files)} image file{'s' if len(files) != 1 else ''} could be classified (reasons above)")


@app.command(cls=Command)
def export(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A finished run directory (the --out of tlkit run).")],
    format_: Annotated[
        str, typer.Option("--format", metavar="onnx|pt2|torchscript", help="onnx, pt2 (torch.export) or torchscript (deprecated upstream).")
    ] = "onnx",
    out: Annotated[Optional[Path], typer.Option("--out", metavar="FILE", help="File to write (default RUN_DIR/model.onnx, .pt2 or .pt).")] = None,
) -> None:
    """Export normalisation + backbone + head as one model: images in [0, 1] in, class probabilities out."""
    from tlkit.saved.export import export as export_model
    from tlkit.saved.reader import load_model

    if format_ not in ("onnx", "pt2", "torchscript"):
        raise typer.BadParameter(f"'{format_}' is not onnx, pt2 or torchscript", param_hint="--format")
    model = load_model(run_dir, _plugins())
    result = export_model(model, format_, out)  # type: ignore[arg-type]
    console.say(f"wrote {result.path} ({result.format}; verified: max probability difference {result.max_difference:.1e})")


@app.command(cls=Command)
def features(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A finished run directory (the --out of tlkit run).")],
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="FILE.npz (numpy, scikit-learn) or FILE.parquet (pandas).")],
) -> None:
    """Write the run's train and test features with labels and paths, for scikit-learn or pandas."""
    from tlkit.saved.feature_export import write_features

    result = write_features(run_dir, out, _plugins(), task=lambda total: console.ConsoleObserver().task("extracting", total=total, unit="img"))
    counts = ", ".join(f"{split} {n}" for split, n in result.counts.items())
    console.say(f"wrote {result.path}: {counts} images x {result.feature_dim} features ({result.cached} from the cache)")


@app.command(cls=Command)
def audit(
    target: Annotated[Path, typer.Argument(metavar="RECIPE|RUN", help="A YAML recipe (extracts through the cache) or a finished run directory.")],
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Override a recipe value, e.g. --set audit.folds=10 (RECIPE only).")
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", metavar="DIR", help="Where audit.json and audit.csv go (default: the RUN, or runs/<recipe>-audit-<time>/).")] = None,
    write_exclusions: Annotated[
        Optional[Path], typer.Option("--write-exclusions", metavar="FILE", help="Also write the flagged files, one per line, for dataset.exclude.")
    ] = None,
    kinds: Annotated[
        Optional[str], typer.Option("--kinds", metavar="KIND,...", help="Finding kinds --write-exclusions lists (default leak,exact_duplicate,near_duplicate,label_issue,outlier).")
    ] = None,
) -> None:
    """Audit a data set: wrong labels, duplicates, train/test leaks, outliers, class and image sizes."""
    from tlkit.audit.exclusions import DEFAULT_KINDS, EXCLUDABLE_KINDS
    from tlkit.audit.exclusions import write_exclusions as write_list
    from tlkit.errors import TlkitError, did_you_mean
    from tlkit.run.audit_command import audit_recipe, audit_run, is_run_directory

    chosen = tuple(k.strip() for k in kinds.split(",") if k.strip()) if kinds else DEFAULT_KINDS
    for kind in chosen:
        if kind not in EXCLUDABLE_KINDS:
            raise TlkitError(f"--kinds: unknown kind '{kind}'{did_you_mean(kind, EXCLUDABLE_KINDS) or '; valid: ' + ', '.join(EXCLUDABLE_KINDS)}")
    if is_run_directory(target):
        if set_:
            raise TlkitError("--set applies to a RECIPE; a RUN is audited with the settings it was run with")
        result = audit_run(target, _plugins(), out, console.ConsoleObserver())
    else:
        from tlkit.recipe.loader import load_recipe

        result = audit_recipe(load_recipe(target, _plugins(), set_ or []), out, console.ConsoleObserver())
    for line in result.report.lines(str(result.out_dir / "audit.csv")):
        console.say(line)
    console.say(f"wrote {result.out_dir / 'audit.json'} and audit.csv ({len(result.report.findings)} findings)")
    if write_exclusions is not None:
        count = write_list(write_exclusions, result.report.findings, chosen)
        console.say(f"wrote {write_exclusions}: {count} file{'s' if count != 1 else ''} to leave out (use it as dataset.exclude)")


@app.command(cls=Command)
def backbones(
    pattern: Annotated[Optional[str], typer.Argument(metavar="PATTERN", help="Shell-style pattern, e.g. 'timm:convnext*'.")] = None,
    json_: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """List backbones: feature dimension, input size, parameters, pretrained tag, licence, offline weights."""
    from tlkit.cli import listings

    rows, hidden = listings.listing("backbones", pattern)
    if json_:
        console.print_json(rows)
        return
    console.print_backbones(rows)
    if hidden:
        console.say(f"and {hidden} more from large catalogues: list them with a pattern, e.g. tlkit backbones 'timm:*'")


@app.command(cls=Command)
def datasets(
    pattern: Annotated[Optional[str], typer.Argument(metavar="PATTERN", help="Shell-style pattern.")] = None,
    json_: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """List registered data set loaders and the options each accepts."""
    from tlkit.cli import listings

    rows, _ = listings.listing("datasets", pattern)
    if json_:
        console.print_json(rows)
        return
    console.print_entries(rows)


@app.command(cls=Command)
def heads(
    pattern: Annotated[Optional[str], typer.Argument(metavar="PATTERN", help="Shell-style pattern.")] = None,
    json_: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """List registered heads and the options each accepts."""
    from tlkit.cli import listings

    rows, _ = listings.listing("heads", pattern)
    if json_:
        console.print_json(rows)
        return
    console.print_entries(rows)


@app.command(cls=Command)
def plugins(
    all_: Annotated[bool, typer.Option("--all", help="Include the built-in plugins.")] = False,
    json_: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """List installed plugins: version, hooks, what each registered, and failures."""
    from tlkit.cli import listings

    rows = listings.plugin_rows(_plugins(), include_builtin=all_)
    if json_:
        console.print_json(rows)
        return
    if not rows:
        console.say("no third-party plugins installed (tlkit plugins --all shows the built-ins)")
        return
    console.print_plugins(rows)


shards_app = typer.Typer(
    help="WebDataset tar shards: write them from an image folder.", no_args_is_help=True, rich_markup_mode=None, context_settings=_CONTEXT
)
app.add_typer(shards_app, name="shards")


@shards_app.command("make", cls=Command)
def shards_make(
    folder: Annotated[Path, typer.Argument(metavar="FOLDER", help="Image folder with train/ and val/ sub-folders, one folder per class.")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Folder to write <split>-000000.tar ... and classes.txt into.")],
    shard_size: Annotated[int, typer.Option("--shard-size", metavar="N", min=1, help="Images per shard.")] = 1000,
    train: Annotated[str, typer.Option("--train", metavar="NAME", help="Training sub-folder.")] = "train",
    test: Annotated[str, typer.Option("--test", metavar="NAME", help="Test sub-folder.")] = "val",
) -> None:
    """Write an image folder as WebDataset shards (image bytes unchanged, class in .cls and .json)."""
    from tlkit.sources.shards import make_from_folder

    console.print_shards(make_from_folder(_plugins(), folder, out, shard_size, train=train, test=test))


@app.command(cls=Command)
def compare(
    recipe: Annotated[Path, typer.Argument(metavar="RECIPE", help="YAML recipe giving the data set (and defaults).")],
    more: Annotated[Optional[list[str]], typer.Argument(metavar="[PATTERN]...", help="More backbone patterns after the first --backbones one.", show_default=False)] = None,
    backbones: Annotated[
        Optional[list[str]], typer.Option("--backbones", metavar="PATTERN", help="Backbone patterns: NAME, NAME@none (random), NAME@PATH; 'timm:resnet1*'.")
    ] = None,
    heads: Annotated[Optional[str], typer.Option("--heads", metavar="HEAD,...", help="Comma-separated heads (default: the recipe's).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Override a recipe value (repeatable).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", metavar="DIR", help="Folder for compare.json/.csv/.png and the runs (default runs/compare-<recipe>-<time>/).")] = None,
) -> None:
    """Rank backbones x heads on a recipe's data: test accuracy with bootstrap 95% intervals, ties marked."""
    from tlkit.recipe.loader import load_recipe
    from tlkit.run.compare import compare as run_compare
    from tlkit.saved.run_directory import default_out_dir

    recipe_obj = load_recipe(recipe, _plugins(), set_ or [])
    patterns = [*(backbones or []), *(more or [])]
    if not patterns:
        raise typer.BadParameter("name at least one backbone pattern", param_hint="--backbones")
    head_names = [h.strip() for h in (heads or recipe_obj.head.name).split(",") if h.strip()]
    result = run_compare(recipe_obj, patterns, head_names, _plugins(), out or default_out_dir(f"compare-{recipe_obj.name}"), console.ConsoleObserver())
    console.print_compare(result)


cache_app = typer.Typer(
    help="The cache (features, converted models, the listing index): what it holds, where, and clearing it.", no_args_is_help=True, rich_markup_mode=None, context_settings=_CONTEXT
)
app.add_typer(cache_app, name="cache")


@cache_app.command("list", cls=Command)
def cache_list(
    json_: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
    wide: Annotated[bool, typer.Option("--wide", help="Show full keys and weights hashes.")] = False,
) -> None:
    """List cache entries (one per backbone, weights, preprocessing and precision), most recently used first."""
    from tlkit.extract import cache

    entries = cache.list_entries()
    if json_:
        console.print_json([e.to_dict() for e in entries])
        return
    if not entries:
        console.say(f"the feature cache in {cache.cache_root()} is empty")
        return
    console.print_cache_entries(entries, wide=wide)


@cache_app.command("info", cls=Command)
def cache_info(json_: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False) -> None:
    """Where the cache is (TLKIT_CACHE_DIR) and how much each store holds: features, converted models, the listing index."""
    from tlkit.extract import cache

    data = cache.summary()
    if json_:
        console.print_json(data)
        return
    console.print_cache_summary(data)


@cache_app.command("clear", cls=Command)
def cache_clear(
    older_than: Annotated[
        Optional[str],
        typer.Option("--older-than", metavar="DURATION", help="Only entries unused for this long, e.g. 30d, 12h, 1d12h."),
    ] = None,
) -> None:
    """Remove cached features and converted models: everything (and the indexes), or the entries not used for --older-than."""
    from tlkit.extract import cache
    from tlkit.util.units import human_bytes

    try:
        seconds = cache.parse_duration(older_than) if older_than is not None else None
    except ValueError as exc:
        raise TlkitError(f"--older-than: {exc}") from None
    removed = cache.clear(older_than_s=seconds)  # refused (one line, exit 2) while a run holds the cache
    freed = human_bytes(sum(e.bytes for e in removed))
    models = sum(e.kind == "converted model" for e in removed)
    of_which = f", {models} of them converted model{'' if models == 1 else 's'}" if models else ""
    console.say(f"removed {len(removed)} cache entr{'y' if len(removed) == 1 else 'ies'} ({freed}{of_which})")


def _say_warnings(held: list[warnings.WarningMessage], *, unless_about: str = "") -> None:
    """Show warnings held while plugins loaded, except a plugin warning about a plugin ``unless_about`` names."""
    for w in held:
        named = re.match(r"plugin '([^']+)'", str(w.message))
        if unless_about and named and f"(plugin {named.group(1)} " in unless_about:
            continue
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    from tlkit.contract.plugin_manager import PluginWarning

    if issubclass(category, PluginWarning) or _state["debug"]:
        console.print_warning(str(message))


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; usage and tlkit errors become one line on stderr and exit code 2."""
    warnings.showwarning = _show_warning
    if argv is None:
        argv = sys.argv[1:]
    # Decided afresh per call: main() may run many times in one process (tests, embedding).
    _state["debug"] = os.environ.get("TLKIT_DEBUG", "") not in ("", "0") or "--debug" in argv
    if not _state["debug"]:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    try:
        code = app(args=argv, prog_name="tlkit", standalone_mode=False)
    except BaseException as exc:  # noqa: BLE001 - sorted into exit codes below; anything else re-raised
        code = console.exit_code_for(exc, debug=_state["debug"])
    sys.exit(code if isinstance(code, int) else 0)
