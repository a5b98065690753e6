"""Small pieces shared by the model-stage commands."""

import typer


def model_config(model, load_in_4bit, dtype, device, batch_size, seed):
    from stages.core.model import ModelConfig

    return ModelConfig(model=model, load_in_4bit=load_in_4bit, dtype=dtype, device=device, batch_size=batch_size,
                       seed=seed)


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
