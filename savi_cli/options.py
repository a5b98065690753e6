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
WorkersOpt = Annotated[int, typer.Option("--workers", "-j", min=1, help="Videos processed in parallel.")]
