"""Options of the commands. Settings are not declared here: each command's setting flags are derived from the
settings classes of `stages/core/settings.py` (name, help, default, bounds), so a flag, a savi.toml key and the
declaration always agree. The rest (where to work, which run and round) are declared once below."""

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from stages.core.settings import default_text

WorkspaceOpt = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", envvar="SAVI_HOME", show_default="./runs",
                 help="Folder holding the runs (env SAVI_HOME)."),
]
RunOpt = Annotated[str, typer.Option("--run", "-r", help="Name of the run (a folder in the workspace).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Redo the work even if it exists with other parameters.")]
FormatOpt = Annotated[
    Literal["table", "csv", "json", "jsonl"],
    typer.Option("--format", "-f", help="Output format."),
]

# Stages that use the policy model.
InputArg = Annotated[
    str | None,
    typer.Argument(help="The previous stage's table (a path it printed), or - to read it from stdin. Sets "
                        "--run and --round. Piped input is read automatically.", show_default=False),
]
StageRunOpt = Annotated[
    str | None, typer.Option("--run", "-r", help="Name of the run. [default: from piped input, else default]")
]
RoundOpt = Annotated[
    int | None, typer.Option("--round", min=1, help="Round number, from 1. [default: from piped input]")
]
PromptsOpt = Annotated[
    Path | None,
    typer.Option("--prompts", help="Folder of prompt files overriding the packaged ones (same file names).",
                 exists=True, file_okay=False),
]


def with_settings(*classes: type, skip: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one flag per setting of each class (but those named in `skip`, as `Class.field`).

    A flag is `--field-name` (with the class's FLAG_PREFIX), or the declared `flag`; its help, default and bounds
    are the declaration's. A flag not given is None, so the run's savi.toml and then the default apply. The command
    receives `settings`: for each class, the values of its flags by field name. Its own parameters come first in
    the help, then the settings, then `force` and `workspace`.
    """
    fields = [(cls, f) for cls in classes for f in dataclasses.fields(cls) if f"{cls.__name__}.{f.name}" not in skip]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.name != "settings"]
        last = [p for p in own if p.name in ("force", "workspace")]
        derived = [inspect.Parameter(_param_name(cls, f), inspect.Parameter.KEYWORD_ONLY, default=None,
                                     annotation=_option(cls, f)) for cls, f in fields]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            settings = {cls: {} for cls in classes}
            for cls, f in fields:
                settings[cls][f.name] = _parse(cls, f, kwargs.pop(_param_name(cls, f)))
            return command(*args, settings=settings, **kwargs)

        # Typer passes every value by keyword, so all of them can be keyword-only, in the order the help shows.
        parameters = [p for p in own if p not in last] + derived + last
        wrapper.__signature__ = signature.replace(
            parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in parameters])
        return wrapper

    return decorate


# The CLIP settings that only scoring pairs uses (`savi filter`): a command that uses CLIP to locate keyframes
# takes its model and weights alone, and its device from savi.toml, since --device is the policy's there.
CLIP_SCORING = tuple(f"ClipConfig.{name}" for name in ("pooling", "topk", "text_pooling", "frames", "device",
                                                       "batch_size"))


def flag_of(cls: type, field: dataclasses.Field) -> str:
    """The flag of a setting: the declared one (its first spelling, for a bool), else --prefix-field-name."""
    declared = field.metadata.get("flag")
    if declared:
        return declared.split("/")[0]
    return f"--{getattr(cls, 'FLAG_PREFIX', '')}{field.name.replace('_', '-')}"


def split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _param_name(cls: type, field: dataclasses.Field) -> str:
    return f"{cls.SECTION}__{field.name}"


def _option(cls: type, field: dataclasses.Field) -> Any:
    """The Annotated type Typer builds the flag from."""
    meta = field.metadata
    kind = _value_type(cls, field)
    declared = meta.get("flag") or flag_of(cls, field)
    if kind is bool and "/" not in declared:
        declared = f"{declared}/--no-{declared.removeprefix('--')}"
    names = [declared] + ([meta["short"]] if meta.get("short") else [])
    bounds = {k: meta[k] for k in ("min", "max") if meta.get(k) is not None}
    if kind is tuple:
        kind = str  # a comma-separated list (its items are checked against the declaration, like savi.toml's)
    elif meta.get("choices"):
        kind = Literal[meta["choices"]]
    option = typer.Option(*names, help=meta["help"], show_default=default_text(field), **bounds)
    return Annotated[kind | None, option]


def _value_type(cls: type, field: dataclasses.Field) -> type:
    """int, float, str, bool or tuple: what a setting holds, unset (None) aside."""
    annotation = typing.get_type_hints(cls)[field.name]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = args[0]
    return typing.get_origin(annotation) or annotation


def _parse(cls: type, field: dataclasses.Field, value: Any) -> Any:
    """A comma-separated list flag into the setting's tuple; every other flag is already typed by Typer."""
    if value is None or _value_type(cls, field) is not tuple:
        return value
    from stages.core.errors import SaviError

    (element,) = {a for a in typing.get_args(typing.get_type_hints(cls)[field.name]) if a is not Ellipsis}
    try:
        return tuple(element(part) for part in split_list(value))
    except ValueError:
        kind = "numbers" if element is float else f"{element.__name__} values"
        raise SaviError(f"{flag_of(cls, field)} {value!r} is not a comma-separated list of {kind}") from None
