"""Command-line usage: errors as one line (click's and typer's bundled copy of click alike), help without type tags.

typer (0.2x) vendors click as ``typer._click`` and raises those classes; older typer raises
click's own. Both are recognised by looking up the exception modules that are already loaded
(an exception of a module can only exist once that module is imported), so nothing is imported
to classify an error.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from typer.core import TyperCommand

from tlkit.errors import did_you_mean, one_line

_CLICK_MODULES = ("typer._click.exceptions", "click.exceptions")
_UNKNOWN_COMMAND = re.compile(r"No such command '(.+?)'")
_EXTRA = re.compile(r"unexpected extra argument(?:s|\(s\))? \((.+)\)")
_POSSIBLE = re.compile(r" \(Possible options: (.+?)\)")


def _classes(name: str) -> tuple[type, ...]:
    """The exception class ``name`` from every loaded click (and typer's own ``Exit``/``Abort``)."""
    modules = [sys.modules.get(m) for m in (*_CLICK_MODULES, "typer.exceptions")]
    return tuple(cls for cls in (getattr(m, name, None) for m in modules if m is not None) if isinstance(cls, type))


def classify(exc: BaseException) -> tuple[str, Any]:
    """``("exit", code)``, ``("help", text)``, ``("usage", one line)``, ``("interrupt", None)`` or ``("other", None)``."""
    if isinstance(exc, _classes("Exit")):
        return "exit", getattr(exc, "exit_code", 0)
    if isinstance(exc, _classes("Abort")):
        return "interrupt", None
    if isinstance(exc, _classes("NoArgsIsHelpError")):
        return "help", exc.format_message()  # type: ignore[attr-defined]
    if isinstance(exc, _classes("ClickException")):
        return "usage", usage_line(exc)
    return "other", None


def usage_line(exc: BaseException) -> str:
    """``no such option: --jsn (did you mean --json?); see tlkit predict --help``: the message, then where to look."""
    message = " ".join(part.strip() for part in exc.format_message().splitlines() if part.strip())  # type: ignore[attr-defined]
    message = message.rstrip(".").replace(". Did you mean", "; did you mean")
    message = _POSSIBLE.sub(lambda m: f"; did you mean {m.group(1).replace(', ', ' or ')}?", message)
    message = message[:1].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    unknown = _UNKNOWN_COMMAND.search(message)
    if unknown and "did you mean" not in message and ctx is not None and hasattr(ctx.command, "list_commands"):
        message += did_you_mean(unknown.group(1), ctx.command.list_commands(ctx), n=2)
    message += _cut_set_item(message, ctx)
    where = f" (see {ctx.command_path} --help)" if ctx is not None else " (see tlkit --help)"
    return one_line(message + where)


def _cut_set_item(message: str, ctx: Any) -> str:
    """The quoting hint when the extra arguments are the rest of an unquoted ``--set`` item the shell split."""
    extra = _EXTRA.search(message)
    items = (getattr(ctx, "params", None) or {}).get("set_") or []
    if not extra or not items:
        return ""
    from tlkit.recipe.set_items import quoting_hint, unbalanced

    cut = [item for item in items if unbalanced(item.partition("=")[2])]
    return quoting_hint(cut[0], extra.group(1).split(" ")) if cut else ""


class Command(TyperCommand):
    """A typer command whose help lists arguments by name, without typer's ``<list[Path]>`` type tags.

    Options name their values with metavars (``--set KEY=VALUE``), flags show as flags.
    """

    def format_options(self, ctx: Any, formatter: Any) -> None:
        args, opts = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                tag = param.display_type_rich(ctx=ctx)  # type: ignore[attr-defined]
                name = record[0]
                if tag and name.endswith(f" {tag}"):
                    name = name[: -len(tag) - 1]
                args.append((name, record[1]))
            else:
                opts.append(record)
        for title, rows in (("Arguments", args), ("Options", opts)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
