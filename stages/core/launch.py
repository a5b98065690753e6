"""One command, several processes: this process's share of a stage's work under `accelerate launch`.

    accelerate launch --num_processes 8 -m savi_cli answer --run kitchen --round 1

accelerate (torchrun underneath) starts the same savi command once per GPU, each process told its rank, the number
of processes, and the launch it belongs to through the environment. savi builds no scheduler of its own on top:

- **Shares.** A stage cuts its work into batches exactly as one process would (`model.pending_batches`), and the
  process of rank r takes batches r, r + n, r + 2n, ... Batches and per-item seeds are those of a one-process run,
  so the table is the same, row for row, whichever process wrote a row.
- **Writing.** Each process flushes its own parts into the table's parts folder (`store.ArtifactWriter`, parts
  named by rank). At the end every process waits for the others (`gather`), and the main one alone merges the
  parts, writes the table and its manifest. A process that dies loses only its unflushed items: the same launch,
  run again, finds the flushed ones done.
- **The run lock.** The main process takes the run's lock for the whole launch and tells the others whether it
  got it; an unrelated command is refused as before (`store.Run.lock`).
- **Device.** On GPUs each process takes the GPU of its local rank (`model.resolve_device`).

The processes talk through accelerate's `PartialState` (gloo on the CPU, NCCL on GPUs), started on first need. A
command that is not launched (no WORLD_SIZE above 1) is a launch of one process, and none of this does anything.
On a CPU-only machine, `accelerate launch --multi_gpu --num_processes 2 ... --device cpu` starts two processes
(accelerate's `--cpu` launches one, unless MPI is configured): that is how the tests run it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from typing import Any


@dataclass(frozen=True)
class Launch:
    """This process's place in its launch: `rank` of `size` processes, `local_rank` on its machine, and the id the
    launch's processes share (torchrun's rendezvous), None for a command that was not launched."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    id: str | None = None

    @property
    def parallel(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def takes(self, index: int) -> bool:
        """Whether batch `index` of a stage's batches (counted over all of them, done or not) is this process's."""
        return index % self.size == self.rank

    def describe(self) -> str:
        return f"launch {self.id} of {self.size} processes" if self.parallel else "one process"

    def wait_for_everyone(self) -> None:
        """Return once every process of the launch has called this (at once for one process)."""
        if self.parallel:
            _state().wait_for_everyone()

    def from_main(self, value: Any) -> Any:
        """The main process's `value`, on every process of the launch (the main process's own elsewhere)."""
        if not self.parallel:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value if self.is_main else None]
        _state()  # the process group must exist before the broadcast
        broadcast_object_list(box, from_process=0)
        return box[0]


def accelerate_command(processes: int) -> list[str]:
    """`accelerate launch` of `processes` savi processes on this machine, GPUs or not, on a free port: through
    torchrun (`--multi_gpu`), since `--cpu` starts one process unless MPI is set up. What the tests, the benchmarks
    and the proof launch with."""
    import socket
    import sys
    from pathlib import Path

    with socket.socket() as s:  # a free port for the launch's rendezvous, so two launches never meet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes",
            str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), "-m", "savi_cli"]


@cache
def current() -> Launch:
    """The launch this process belongs to, read from the environment torchrun (and so accelerate launch) sets."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return Launch()
    rendezvous = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    where = f"{os.environ.get('MASTER_ADDR', 'localhost')}:{os.environ.get('MASTER_PORT', '')}"
    return Launch(rank=int(os.environ.get("RANK", "0")), size=size,
                  local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                  id=where if rendezvous == "none" else f"{where}/{rendezvous}")


def shards_parameters(env: dict[str, str] | None = None) -> bool:
    """Whether the launch shards each weight across its processes (FSDP, or DeepSpeed ZeRO-3), read from what
    accelerate launch puts in the environment: its flags, or the stage in the DeepSpeed config file it was given."""
    env = os.environ if env is None else env
    if env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return True
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return False
    stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    if stage is None and env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        with open(env["ACCELERATE_DEEPSPEED_CONFIG_FILE"]) as f:
            stage = json.load(f).get("zero_optimization", {}).get("stage")
    return str(stage) == "3"


@cache
def _state() -> Any:
    """accelerate's process state, started once: NCCL where this process has a GPU, gloo on the CPU."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())
