from pathlib import Path
from typing import Annotated

import typer

from savi_cli.errors import user_errors


@user_errors
def tiny_model(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the model into.")],
    family: Annotated[str, typer.Option(help="Model family: qwen2_5_vl, qwen2_vl, qwen3_vl or "
                                             "llava_onevision.")] = "qwen2_5_vl",
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Build a tiny, randomly initialised video chat model offline, to try every command without a GPU.

    Its output is meaningless text, but it runs the real code path: any command's --model accepts the folder.

    Example:

        savi tiny-model models/tiny --family qwen2_5_vl
    """
    from stages.core.errors import SaviError
    from stages.offline.tiny_model import FAMILIES, build_tiny_model

    if family not in FAMILIES:
        raise SaviError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    typer.echo(str(build_tiny_model(out_dir, family=family, seed=seed)))


@user_errors
def tiny_clip(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the CLIP model into.")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Build a tiny, randomly initialised CLIP offline, for `savi filter` without a download.

    Its scores are meaningless, but the real loading and scoring path runs. Pass it as
    --clip-model local-dir:OUT_DIR.

    Example:

        savi tiny-clip models/tiny-clip
    """
    from stages.offline.tiny_clip import build_tiny_clip

    typer.echo(str(build_tiny_clip(out_dir, seed=seed)))
