"""A run's resolved configuration, `<run>/savi.toml`.

Every stage that uses the policy model must use the same one, or the rounds stop being versions of one model.
So the first model-using command of a run records its model settings here, later commands take them as their
defaults, and a command that names a different model is refused.
"""

from __future__ import annotations

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
