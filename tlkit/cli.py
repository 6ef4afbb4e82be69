"""The ``tlkit`` command: parse, call the engine, print. Errors become one line and exit code 2."""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer

from tlkit import catalog, console
from tlkit.errors import TlkitError

app = typer.Typer(
    name="tlkit",
    help="Transfer learning on small image data sets: pretrained backbones, small heads, YAML recipes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": os.environ.get("TLKIT_DEBUG", "") not in ("", "0")}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
) -> None:
    """tlkit: a strong transfer-learning baseline on your own folder of images, in one command."""
    if debug:
        _state["debug"] = True


def _plugins() -> Any:
    from tlkit.plugins import get_plugins

    return get_plugins()


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="YAML recipe, e.g. recipes/hymenoptera.yaml.")],
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override a recipe value: dotted.key=value (repeatable).")
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Run directory (default runs/<recipe>-<timestamp>/).")] = None,
) -> None:
    """Run a recipe: extract features with the backbone, train the head, evaluate, save the run."""
    from tlkit.engine import run as run_recipe
    from tlkit.recipe import load_recipe

    recipe_obj = load_recipe(recipe, _plugins(), set_ or [])
    try:
        result = run_recipe(recipe_obj, out, console.ConsoleObserver())
    except KeyboardInterrupt as exc:
        # typer turns Ctrl-C into a silent exit 130; say what stopped and what was kept first.
        console.print_error(str(exc) or "interrupted; nothing was written")
        raise typer.Exit(130) from None
    m = result.metrics
    rows = [
        ("recipe", recipe_obj.name),
        ("backbone", recipe_obj.backbone.name),
        ("head", recipe_obj.head.name),
        ("images", f"train {m.counts['train']}, test {m.counts['test']}, skipped {m.skipped_images}"),
        ("train accuracy", console.percent(m.train_accuracy)),
        ("test accuracy", console.percent(m.test_accuracy)),
        ("test balanced accuracy", console.percent(m.test_balanced_accuracy)),
        ("test errors", f"{m.test_errors} (errors.csv, confusion_matrix.png)"),
        ("time", f"{m.timings_s['total']:.1f} s (extraction {m.timings_s['extract']:.1f} s)"),
        ("saved to", str(result.out_dir)),
    ]
    console.print_evaluation(m.test.to_dict(), m.classes)
    console.table("summary", ["", ""], rows)
    if result.bad_images:
        shown = 20
        console.table(
            f"skipped {len(result.bad_images)} file{'s' if len(result.bad_images) != 1 else ''} that could not be used (all in bad_images.csv)",
            ["split", "file", "reason"],
            [(bad.split, str(bad.path), bad.reason) for bad in result.bad_images[:shown]],
        )
        if len(result.bad_images) > shown:
            console.out.print(f"and {len(result.bad_images) - shown} more: see {result.out_dir / 'bad_images.csv'}")


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory (the --out of tlkit run).")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Show the K most probable classes of each image.")] = 1,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object per line instead of a table.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Classify images with a saved run: path, class and probability for each."""
    from tlkit.model import image_files, load_model
    from tlkit.model import predict as predict_files

    if device not in ("auto", "cpu", "cuda"):
        raise click.BadParameter(f"'{device}' is not auto, cpu or cuda", param_hint="--device")
    model = load_model(run_dir, _plugins())
    result = predict_files(model, image_files(images), device=device)
    tops = result.top(top_k)
    if json_:
        for path, top in zip(result.paths, tops):
            line: dict[str, Any] = {"path": str(path), "class": model.classes[top[0][0]], "probability": top[0][1]}
            if top_k > 1:
                line["top_k"] = [{"class": model.classes[i], "probability": p} for i, p in top]
            console.print_json_line(line)
        for path, reason in result.bad:
            console.print_json_line({"path": str(path), "error": reason})
        return
    columns = ["path", "class", "probability"] + ([f"top {top_k}"] if top_k > 1 else [])
    rows = []
    for path, top in zip(result.paths, tops):
        row: list[Any] = [str(path), model.classes[top[0][0]], f"{top[0][1]:.4f}"]
        if top_k > 1:
            row.append(", ".join(f"{model.classes[i]} {p:.4f}" for i, p in top))
        rows.append(row)
    console.table(None, columns, rows)
    for path, reason in result.bad:
        console.print_warning(f"skipped {path}: {reason}")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory (the --out of tlkit run).")],
    format_: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
    out: Annotated[Optional[Path], typer.Option("--out", help="File to write (default RUN_DIR/model.onnx or model.pt).")] = None,
) -> None:
    """Export backbone + head as one model: normalised image batch in, class probabilities out."""
    from tlkit.export import export as export_model
    from tlkit.model import load_model

    if format_ not in ("onnx", "torchscript"):
        raise click.BadParameter(f"'{format_}' is not onnx or torchscript", param_hint="--format")
    model = load_model(run_dir, _plugins())
    result = export_model(model, format_, out)  # type: ignore[arg-type]
    console.out.print(f"wrote {result.path} ({result.format}; verified: max probability difference {result.max_difference:.1e})", highlight=False)


def _options_text(options: list[dict[str, Any]]) -> str:
    """One line per option: ``name: type = default  help`` (``(required)`` when it has no default)."""
    lines = []
    for o in options:
        default = "(required)" if o["default"] == "required" else f"= {o['default']!r}"
        lines.append(f"{o['name']}: {o['type']} {default}" + (f"  {o['help']}" if o["help"] else ""))
    return "\n".join(lines) or "-"


@app.command()
def backbones(
    pattern: Annotated[Optional[str], typer.Argument(help="Shell-style pattern, e.g. 'timm:convnext*'.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List registered backbones: feature dimension, plugin, and whether weights are available offline."""
    plugins = _plugins()
    rows = catalog.backbones(plugins, pattern)
    if json_:
        console.print_json(rows)
        return
    yes_no = {True: "yes", False: "no", None: "?"}
    console.table(
        None,
        ["name", "dim", "plugin", "offline weights", "description"],
        [(r["name"], r["feature_dim"], r["plugin"], yes_no[r["weights_offline"]], r["description"]) for r in rows],
    )
    hidden = plugins.backbones.hidden_count() if pattern is None else 0
    if hidden:
        console.out.print(f"and {hidden} more from large catalogues: list them with a pattern, e.g. tlkit backbones 'timm:*'")


@app.command()
def datasets(
    pattern: Annotated[Optional[str], typer.Argument(help="Shell-style pattern.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List registered data set loaders and the options each accepts."""
    rows = catalog.datasets(_plugins(), pattern)
    if json_:
        console.print_json(rows)
        return
    console.table(None, ["name", "plugin", "description", "options"], [(r["name"], r["plugin"], r["description"], _options_text(r["options"])) for r in rows])


@app.command()
def heads(
    pattern: Annotated[Optional[str], typer.Argument(help="Shell-style pattern.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List registered heads and the options each accepts."""
    rows = catalog.heads(_plugins(), pattern)
    if json_:
        console.print_json(rows)
        return
    console.table(None, ["name", "plugin", "description", "options"], [(r["name"], r["plugin"], r["description"], _options_text(r["options"])) for r in rows])


@app.command()
def plugins(
    all_: Annotated[bool, typer.Option("--all", help="Include the built-in plugins.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List installed plugins: version, hooks, what each registered, and failures."""
    rows = catalog.plugin_rows(_plugins(), include_builtin=all_)
    if json_:
        console.print_json(rows)
        return
    if not rows:
        console.out.print("no third-party plugins installed (tlkit plugins --all shows the built-ins)")
        return
    console.table(
        None,
        ["name", "version", "hooks", "registered", "status"],
        [
            (
                r["name"],
                r["version"],
                ", ".join(r["hooks"]),
                "; ".join(f"{k}: {v if isinstance(v, int) else ', '.join(v)}" for k, v in r["registered"].items()),
                r["status"] + (f": {r['error']}" if r["error"] else ""),
            )
            for r in rows
        ],
    )


cache_app = typer.Typer(help="The feature cache: what it holds, where, and clearing it.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("list")
def cache_list(json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """List cache entries (one per backbone, weights, preprocessing and precision), most recently used first."""
    from tlkit import cache

    entries = cache.list_entries()
    if json_:
        console.print_json([e.to_dict() for e in entries])
        return
    if not entries:
        console.out.print(f"the feature cache in {cache.cache_root()} is empty")
        return
    console.table(
        None,
        ["key", "backbone", "weights", "precision", "features", "size", "last used"],
        [
            (e.key[:12], e.backbone, e.weights[:19], e.precision, e.features, cache.human_bytes(e.bytes), console.ago(e.last_used))
            for e in entries
        ],
    )


@cache_app.command("info")
def cache_info(json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """Where the feature cache is (TLKIT_CACHE_DIR) and how much it holds."""
    from tlkit import cache

    data = cache.summary()
    if json_:
        console.print_json(data)
        return
    console.table(
        None,
        ["", ""],
        [
            ("path", f"{data['path']} (set {data['env']} to move it)"),
            ("entries", data["entries"]),
            ("features", data["features"]),
            ("size", cache.human_bytes(data["bytes"])),
        ],
    )


@cache_app.command("clear")
def cache_clear(
    older_than: Annotated[
        Optional[str], typer.Option("--older-than", help="Only entries unused for this long, e.g. 30d, 12h, 1d12h.")
    ] = None,
) -> None:
    """Remove cached features: everything, or the entries not used for --older-than."""
    from tlkit import cache

    try:
        seconds = cache.parse_duration(older_than) if older_than is not None else None
    except ValueError as exc:
        raise TlkitError(f"--older-than: {exc}") from None
    removed = cache.clear(older_than_s=seconds)
    freed = cache.human_bytes(sum(e.bytes for e in removed))
    console.out.print(f"removed {len(removed)} cache entr{'y' if len(removed) == 1 else 'ies'} ({freed})")


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    from tlkit.plugins import PluginWarning

    if issubclass(category, PluginWarning) or _state["debug"]:
        console.print_warning(str(message))


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning tlkit errors into one line on stderr and exit code 2."""
    warnings.showwarning = _show_warning
    if not _state["debug"]:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    if argv is None:
        argv = sys.argv[1:]
    # Decided afresh per call: main() may run many times in one process (tests, embedding).
    _state["debug"] = os.environ.get("TLKIT_DEBUG", "") not in ("", "0") or "--debug" in argv
    try:
        code = app(args=argv, prog_name="tlkit", standalone_mode=False)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(2)
    except (KeyboardInterrupt, click.exceptions.Abort):
        console.print_error("interrupted; nothing was written")
        sys.exit(130)
    except TlkitError as exc:
        if _state["debug"]:
            traceback.print_exc()
        console.print_error(str(exc))
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
