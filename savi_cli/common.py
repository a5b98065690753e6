"""Small pieces shared by the model-stage commands."""

import typer


def model_config(run, **flags):
    """The model settings: the flags given, else [model] of the run's savi.toml, else the defaults."""
    from stages.core.config import resolve_model

    return resolve_model(run, flags)


def report(result, noun: str) -> None:
    """One line on stderr saying what happened; the table's path alone on stdout, for the next stage."""
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    if result.up_to_date:
        typer.echo(f"{noun} up to date ({counts})", err=True)
    else:
        typer.echo(f"{result.items_done} {noun} done now; table holds {counts}", err=True)
    typer.echo(str(result.path))


def split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
