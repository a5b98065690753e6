from pathlib import Path
from typing import Annotated

import typer

from savi_cli.errors import user_errors
from savi_cli.options import with_settings
from stages.core.settings import WorldModelConfig


@user_errors
@with_settings(WorldModelConfig, skip=("WorldModelConfig.family", "WorldModelConfig.seed"))
def tiny_model(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the model into.")],
    family: Annotated[str, typer.Option(help="Model family: qwen2_5_vl, qwen2_vl, qwen3_vl or "
                                             "llava_onevision.")] = "qwen2_5_vl",
    seed: Annotated[int, typer.Option(help="Seed of the random weights (and, with --world, of the training).")] = 0,
    world: Annotated[Path | None, typer.Option(help="Fine-tune the model on this world's train split (`savi world "
                                                    "DIR`) until it knows it imperfectly; the flags below apply.",
                                               show_default=False)] = None,
    *,
    settings: dict,
) -> None:
    """Build a tiny video chat model offline, to try every command without a GPU: random, or knowing a world.

    A random one's output is meaningless text, but it runs the real code path: any command's --model accepts the
    folder. With --world it learns the world instead: its vision tower initialised so that it can see, then
    fine-tuned in one thread on the train split until its accuracy on the val split, scored as `savi eval world`
    scores it, reaches --target with every kind of question at --kind-target (about 5-15 CPU-minutes on the default
    world); a kind that reaches --kind-ceiling rests until the others catch up. world_training.json records the
    steps and the accuracy it stopped at; the same seed gives the same model.

    Example:

        savi tiny-model models/tiny --family qwen2_5_vl

        savi tiny-model models/w0 --world worlds/w0
    """
    from stages.core.errors import SaviError
    from stages.offline.tiny_model import FAMILIES, build_tiny_model

    if family not in FAMILIES:
        raise SaviError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    if world is None:
        typer.echo(str(build_tiny_model(out_dir, family=family, seed=seed)))
        return
    import json

    from savi_cli.progress import progress_bar
    from stages.offline.world_model import TRAINING_FILE, build_world_model, by_kind_text

    given = {k: v for k, v in settings[WorldModelConfig].items() if v is not None}
    cfg = WorldModelConfig(family=family, seed=seed, **given)
    folder = build_world_model(out_dir, world, cfg, progress=lambda total: progress_bar(total, "world model", "step"))
    record = json.loads((folder / TRAINING_FILE).read_text())
    typer.echo(f"val accuracy {record['val_accuracy']:.3f} ({by_kind_text(record)}) at step {record['steps']} "
               f"(target {cfg.target}, every kind {cfg.kind_target}"
               f"{'' if record['reached_target'] else ': not reached'}), {record['seconds']:.0f} s", err=True)
    typer.echo(str(folder))


@user_errors
def tiny_clip(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the CLIP model into.")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights (and, with --world, of the training).")] = 0,
    world: Annotated[Path | None, typer.Option(help="Train the CLIP on this world's judge split (`savi world DIR`) "
                                                    "instead of leaving it random.", show_default=False)] = None,
    steps: Annotated[int, typer.Option(min=1, help="Training steps with --world.")] = 2000,
) -> None:
    """Build a tiny CLIP offline, for `savi filter` without a download: random, or trained on a world.

    A random one's scores are meaningless, but the real loading and scoring path runs. With --world it learns the
    world's clips (single frames and 2x2 time-ordered grids, against the replies that are true and false of
    them), in one thread (about 2.5 CPU-minutes), and records its held-out accuracy in world_training.json. Pass
    it as --clip-model local-dir:OUT_DIR.

    Example:

        savi tiny-clip models/world-clip --world worlds/w0
    """
    if world is None:
        from stages.offline.tiny_clip import build_tiny_clip

        typer.echo(str(build_tiny_clip(out_dir, seed=seed)))
        return
    from savi_cli.progress import progress_bar
    from stages.offline.world_clip import build_world_clip

    typer.echo(str(build_world_clip(out_dir, world, seed=seed, steps=steps,
                                    progress=lambda total: progress_bar(total, "world clip", "step"))))


@user_errors
def world(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the world into (new, empty, or an earlier world).")],
    seed: Annotated[int, typer.Option(min=0, help="Seed of the world: the same seed writes the same bytes.")] = 0,
    small: Annotated[bool, typer.Option("--small", help="A small world (265 clips instead of "
                                                        "3,850), for a first look.")] = False,
) -> None:
    """Build a world where the truth is known: clips of moving shapes, and questions about them with answers.

    Each clip holds one or two shapes of known colour, kind and direction. Two questions per clip (which way does
    a shape move, what colour is the shape that moves a given way), each with 4 options, in the splits train,
    judge, pool, val and test. `savi eval world --data OUT_DIR` scores a model on them like any benchmark.
    Rebuilding with the same seed and size does nothing.

    Example:

        savi world worlds/w0 --seed 0
    """
    from savi_cli.progress import progress_bar
    from stages.offline.world import SIZES, SMALL_SIZES, build_world

    sizes = SMALL_SIZES if small else SIZES
    folder = build_world(out_dir, seed=seed, sizes=sizes,
                         progress=lambda total: progress_bar(total, "world", "clip"))
    splits = ", ".join(f"{split} {n}" for split, n in sizes.items())
    typer.echo(f"world of seed {seed}: {sum(sizes.values())} clips ({splits}), "
               f"{2 * sum(sizes.values())} questions", err=True)
    typer.echo(str(folder))
