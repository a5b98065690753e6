"""Options shared by several commands, declared once so a flag always has the same name, help and default."""

from pathlib import Path
from typing import Annotated, Literal

import typer

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
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", "-j", min=1, show_default="1", help="Videos processed in parallel.")
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
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Hub id or local folder of the base model. [default: the run's model, "
                                       "else Qwen/Qwen2.5-VL-7B-Instruct]"),
]
# Settings of the model and of each stage: a flag that is not given (None) falls back to the run's savi.toml,
# then to the default shown, so the defaults live in one place (the stage's config dataclass).
Load4bitOpt = Annotated[
    bool | None, typer.Option("--load-in-4bit/--no-load-in-4bit", show_default="off",
                              help="Load the model in 4-bit NF4 (bitsandbytes).")
]
BatchSizeOpt = Annotated[
    int | None, typer.Option("--batch-size", "-b", min=1, show_default="4",
                             help="Prompts per batch; halved on CUDA out-of-memory.")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", show_default="0", help="Seed for sampling.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", show_default="auto", help="auto, cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[
    str | None, typer.Option("--dtype", show_default="auto",
                             help="auto (bf16 on GPU, fp32 on CPU), bfloat16, float16, float32.")
]
PromptsOpt = Annotated[
    Path | None,
    typer.Option("--prompts", help="Folder of prompt files overriding the packaged ones (same file names).",
                 exists=True, file_okay=False),
]
MaxNewTokensOpt = Annotated[
    int | None, typer.Option("--max-new-tokens", min=1, show_default="256", help="Longest generation, in tokens.")
]
