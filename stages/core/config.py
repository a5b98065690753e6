"""A run's resolved configuration, `<run>/savi.toml`.

Every stage that uses the policy model must use the same one, or the rounds stop being versions of one model.
So the first model-using command of a run records its model settings here, later commands take them as their
defaults, and a command that names a different model is refused.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from stages.core.errors import SaviError
from stages.core.store import Run, atomic_path

CONFIG_NAME = "savi.toml"


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


def settle_model(run: Run, requested: str | None, default: str) -> str:
    """The run's policy model: recorded by the first command that uses one; later commands must agree.

    `requested` is what the user passed (None when not given). Quantisation and batch size are not part of
    this: they change speed and memory, not which model the run is aligning.
    """
    if requested is not None and Path(requested).exists():
        requested = str(Path(requested).resolve())  # a local folder must still be found from another directory
    recorded = read_config(run).get("model", {}).get("id")
    if requested is not None and recorded is not None and requested != recorded:
        raise SaviError(f"run '{run.name}' aligns {recorded!r} (see {run.path / CONFIG_NAME}); every stage of a "
                        f"run uses the same policy, so start a new run for {requested!r}")
    model = recorded or requested or default
    if recorded is None:
        update_config(run, "model", {"id": model})
    return model


def resolve(run: Run, section: str, config_class: type, flags: dict[str, Any] | None = None) -> Any:
    """A stage's settings: the dataclass defaults, then `[section]` of the run's savi.toml, then the flags given
    (None: not given). Unknown keys in the file are an error, so a typo never passes silently."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    from_file = read_config(run).get(section, {})
    if not isinstance(from_file, dict):
        raise SaviError(f"[{section}] of {run.path / CONFIG_NAME} must be a table of settings")
    unknown = sorted(set(from_file) - set(fields))
    if unknown:
        raise SaviError(f"unknown setting {', '.join(unknown)} in [{section}] of {run.path / CONFIG_NAME}; "
                        f"known: {', '.join(fields)}")
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise SaviError(f"unknown setting {', '.join(unknown)} in [{section}]; known: {', '.join(fields)}")
    values = {**from_file, **given}
    # TOML has arrays where the dataclasses have tuples (hashable, so configs can be compared and fingerprinted).
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return config_class(**values)
    except TypeError as e:
        raise SaviError(f"bad settings for [{section}]: {e}") from None


def resolve_model(run: Run, flags: dict[str, Any] | None = None) -> Any:
    """ModelConfig from `[model]` of savi.toml (where the model itself is `id`) and the flags given."""
    from stages.core.model import ModelConfig

    section = dict(read_config(run).get("model", {}))
    if "id" in section:
        section["model"] = section.pop("id")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(section) - fields)
    if unknown:
        raise SaviError(f"unknown setting {', '.join(unknown)} in [model] of {run.path / CONFIG_NAME}; "
                        f"known: id, {', '.join(sorted(fields - {'model'}))}")
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    return ModelConfig(**{**section, **given})
