"""A run's resolved configuration, `<run>/savi.toml`: one section per settings class of `stages/core/settings.py`.

A stage's settings are, in order of precedence: the flags given, then the section of the run's savi.toml, then
the declared defaults. Every stage that uses the policy model must use the same one, or the rounds stop being
versions of one model: so the model is settled once per command (`resolve_model`), the first command of a run
records it, and a command that names another is refused.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import Any, TypeVar

from stages.core.errors import SaviError
from stages.core.settings import ModelConfig
from stages.core.store import Run, atomic_path

CONFIG_NAME = "savi.toml"
Settings = TypeVar("Settings")


def read_config(run: Run) -> dict[str, Any]:
    path = run.path / CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SaviError(f"{path} is not valid TOML ({e}); fix or delete it") from None


def update_config(run: Run, section: str, values: dict[str, Any]) -> None:
    """Set `values` under `[section]`, dropping None (TOML has no null), and write the file atomically."""
    import tomli_w

    config = read_config(run)
    config.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    path = run.path / CONFIG_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(tomli_w.dumps(config))


# Settings that savi has renamed: a run's savi.toml written before says what to write instead.
RENAMED = {("eval", "mode"): 'protocol ("likelihood", or "lmms-eval" for what was "generate": docs/EVAL.md)'}


def resolve(run: Run, settings: type[Settings], flags: dict[str, Any] | None = None) -> Settings:
    """A settings class filled in: the declared defaults, then its section of the run's savi.toml, then the flags
    given (None: not given). Every value is checked against its declaration (type, bounds, choices) before any
    work starts, and an unknown key is an error, so a typo never passes silently."""
    section = settings.SECTION
    fields = {f.name: f for f in dataclasses.fields(settings)}
    hints = typing.get_type_hints(settings)
    from_file = read_config(run).get(section, {})
    where = run.path / CONFIG_NAME
    if not isinstance(from_file, dict):
        raise SaviError(f"[{section}] of {where} must be a table of settings")
    unknown = sorted(set(from_file) - set(fields))
    if (section, *unknown) in RENAMED:
        raise SaviError(f"[{section}] {unknown[0]} in {where} is now {RENAMED[(section, *unknown)]}")
    if unknown:
        raise SaviError(f"unknown setting {', '.join(unknown)} in [{section}] of {where}; known: {', '.join(fields)}")
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise SaviError(f"unknown setting {', '.join(unknown)} in [{section}]; known: {', '.join(fields)}")
    values = {name: checked(value, hints[name], fields[name], f"[{section}] {name} in {where}")
              for name, value in from_file.items()}
    values.update({name: checked(value, hints[name], fields[name], f"{section}.{name} (given on the command line)")
                   for name, value in given.items()})
    return settings(**values)


def checked(value: Any, annotation: Any, field: dataclasses.Field, label: str) -> Any:
    """`value` as the declared type of a setting (a TOML array becomes a tuple, an int a float where a float is
    declared), or a one-line error saying what it must be."""
    meta = field.metadata
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    if value is None and type(None) in typing.get_args(annotation):
        return None
    if len(options) == 1 and typing.get_origin(annotation) is not tuple:  # `X | None`
        annotation = options[0]
    if typing.get_origin(annotation) is tuple:
        if not isinstance(value, (list, tuple)):
            example = ", ".join(repr(v) for v in field.default)
            raise SaviError(f"{label} is {value!r}: it must be a list, like [{example}]")
        element = typing.get_args(annotation)[0]
        return tuple(_one(v, element, meta, f"{label}: item {v!r}:") for v in value)
    return _one(value, annotation, meta, f"{label} is {value!r}:")


def _one(value: Any, kind: type, meta: dict[str, Any], label: str) -> Any:
    if kind is bool and not isinstance(value, bool):
        raise SaviError(f"{label} it must be true or false")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise SaviError(f"{label} it must be a whole number")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SaviError(f"{label} it must be a number")
        value = float(value)
    if kind is str and not isinstance(value, str):
        raise SaviError(f"{label} it must be text")
    if meta.get("min") is not None and value < meta["min"]:
        raise SaviError(f"{label} it must be at least {meta['min']}")
    if meta.get("max") is not None and value > meta["max"]:
        raise SaviError(f"{label} it must be at most {meta['max']}")
    if meta.get("choices") and value not in meta["choices"]:
        raise SaviError(f"{label} it must be one of {', '.join(meta['choices'])}")
    return value


def resolve_model(run: Run, flags: dict[str, Any] | None = None) -> ModelConfig:
    """The run's model settings, settled: `id` is the run's model (the one its savi.toml records), else the one
    named, else the default.

    A local folder is named by its absolute path, so it is found from any directory; another id than the recorded
    one is refused. Quantisation, batch size and the rest may change from command to command: they change speed
    and memory, not which model the run is aligning. The model is recorded once it has loaded (`remember_model`).
    """
    flags = dict(flags or {})
    requested = flags.get("id")
    if requested is not None and Path(requested).exists():
        flags["id"] = requested = str(Path(requested).resolve())
    recorded = read_config(run).get(ModelConfig.SECTION, {}).get("id")
    if requested is not None and recorded is not None and requested != recorded:
        raise SaviError(f"run '{run.name}' aligns {recorded!r} (see {run.path / CONFIG_NAME}); every stage of a "
                        f"run uses the same policy, so start a new run for {requested!r}")
    return resolve(run, ModelConfig, flags)


def remember_model(run: Run, model_id: str) -> None:
    """Record the run's model, if it has none yet: called once a model has loaded for the run, so a command that
    fails before that leaves no trace."""
    if read_config(run).get(ModelConfig.SECTION, {}).get("id") is None:
        update_config(run, ModelConfig.SECTION, {"id": model_id})
