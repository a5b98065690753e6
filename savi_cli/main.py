"""The `savi` application: every command, registered in pipeline order.

Command modules import only Typer at the top; the engine (and torch) is imported inside each command, so
`savi --help` answers instantly.
"""

import io
import logging
import os
import sys
import warnings

import typer

from savi_cli.commands import (
    answer,
    ask,
    critique,
    demo,
    dpo,
    eval,
    export,
    filter,
    keyframes,
    query,
    report,
    round,
    sample,
    status,
    tiny_model,
)

app = typer.Typer(
    name="savi",
    help="Align a video-language model on unlabeled videos: it asks, answers and critiques itself, CLIP keeps "
    "the grounded pairs, and 4-bit DPO trains on them.\n\n"
    "Start with `savi sample VIDEOS --run NAME`, then `savi round 1 --run NAME`; compare rounds with "
    "`savi report`, and look inside with `savi status` and `savi query`. `savi demo` shows it all offline.",
    rich_markup_mode=None,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

@app.callback()
def main(ctx: typer.Context) -> None:
    # Stages log warnings (4-bit on CPU, batch size lowered); show them as plain lines on stderr.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="warning: %(message)s")
    # On AVX-512 BF16 CPUs bitsandbytes asks for an optional kernel package from the model hub; its own slower
    # path is correct, and 4-bit on a CPU is for tests and the demo anyway.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # Deprecation notices from inside transformers/peft are for their developers; a savi user cannot act on them.
    warnings.filterwarnings("ignore", category=FutureWarning)
    share_out_a_launch(ctx.invoked_subcommand)


# The commands whose work the processes of an `accelerate launch` share: the model stages, DPO's training, and
# `savi round --stage`, which `savi round --launch` launches (a launched plain `savi round` is refused).
LAUNCHED = {"ask", "keyframes", "answer", "critique", "eval", "dpo", "round"}


def share_out_a_launch(command: str | None) -> None:
    """Under `accelerate launch` every process runs the same command. The main one prints the table's path and the
    summary, the others only their errors (one line each, as ever); a command with nothing to share runs in the
    main process alone."""
    from stages.core.launch import current

    if not current().is_main:
        if command not in LAUNCHED:
            raise typer.Exit(0)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
        sys.stderr = ErrorLinesOnly(sys.stderr)
        logging.getLogger().setLevel(logging.ERROR)


class ErrorLinesOnly(io.TextIOBase):
    """A stream that passes on only the lines that begin with "Error:" (what a stage did is the main process's
    to say)."""

    def __init__(self, stream: io.TextIOBase):
        self.stream, self.pending = stream, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if line.startswith("Error:"):
                self.stream.write(line + "\n")
                self.stream.flush()
        return len(text)


app.command("sample")(sample.sample)
app.command("round")(round.round_command)
app.command("ask")(ask.ask)
app.command("keyframes")(keyframes.keyframes)
app.command("answer")(answer.answer)
app.command("critique")(critique.critique)
app.command("filter")(filter.filter)
app.command("dpo")(dpo.dpo)
app.command("eval")(eval.eval_command)
app.command("report")(report.report)
app.command("query")(query.query)
app.command("status")(status.status)
app.command("demo")(demo.demo)
app.command("tiny-model")(tiny_model.tiny_model)
app.command("tiny-clip")(tiny_model.tiny_clip)
app.command("world")(tiny_model.world)
app.add_typer(export.app, name="export")
