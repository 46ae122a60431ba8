"""The one place SAFE talks to accelerate: process state, launching, and the few collectives the trainers need.

Everything runs unchanged in one process (no `accelerate launch`): `process_state()` is then rank 0 of 1 and every
collective is the identity. Under `accelerate launch` (or torchrun) the same code runs DDP: gloo on CPU, NCCL on GPUs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Any, Iterator, Sequence

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, gather_object
from torch.utils.data import Sampler


def process_state() -> PartialState:
    """accelerate's shared process state. On a machine without CUDA the launched processes use gloo on the CPU
    (accelerate only picks MULTI_CPU when told `cpu=True`)."""
    return PartialState(cpu=not torch.cuda.is_available())


def make_accelerator(mixed_precision: str = "no", gradient_accumulation_steps: int = 1) -> Accelerator:
    """The trainers' accelerate engine: DDP across launched processes (identity in one), autocast, accumulation.

    `find_unused_parameters`: a process whose rows all get budget 0 never runs the projector or the fusion blocks
    in that step; DDP must still take part in the gradient all-reduce for them."""
    return Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def native_bf16(device: torch.device) -> bool:
    """True when `device` runs bf16 matrix products in hardware: a CUDA GPU that supports bf16, or a CPU with
    AVX512-BF16 or AMX (elsewhere a CPU emulates bf16 and autocast can be slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch's own CPU feature checks
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_inference_precision(mixed_precision: str, device: torch.device | None = None) -> str:
    """`evaluate.mixed_precision` as it will run: `auto` is bf16 on a device with native bf16, else no."""
    if mixed_precision != "auto":
        return mixed_precision
    return "bf16" if native_bf16(device or process_state().device) else "no"


def inference_autocast(mixed_precision: str = "no") -> contextlib.AbstractContextManager:
    """Autocast for a stage that only runs the models (Stage B's rollouts, evaluate's test table;
    `evaluate.mixed_precision`): bf16 or fp16 on this process's device, nothing for `no`, bf16 or nothing for
    `auto` (`resolve_inference_precision`). Budget 0 and the base still run the same operations, so they still
    agree exactly."""
    mixed_precision = resolve_inference_precision(mixed_precision)
    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return torch.autocast(device_type=process_state().device.type, dtype=dtype)


class ShardedBatchSampler(Sampler[list[int]]):
    """This process's rows of every GLOBAL batch of `batch_sampler` (rows rank, rank + world, ...).

    Every process draws the same global batches (the wrapped sampler is seeded), so N processes together see
    exactly the batches one process would; `set_start` (resume) is passed through."""

    def __init__(self, batch_sampler: Sampler[list[int]], state: PartialState | None = None):
        self.batch_sampler = batch_sampler
        self.state = state or process_state()

    def set_start(self, batch_index: int) -> None:
        self.batch_sampler.set_start(batch_index)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batch_sampler:
            yield batch[self.state.process_index::self.state.num_processes]


def is_launched() -> bool:
    """True inside a process started by `accelerate launch` / torchrun (they set LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", -1)) != -1


def launch_command(module: str, num_processes: int, mixed_precision: str = "no") -> list[str]:
    """`accelerate launch` for `python -m <module>` on this machine with `num_processes` processes.

    `--multi_gpu` is accelerate's flag for "DDP over processes"; on a machine without CUDA the processes pick gloo
    on the CPU (see `process_state`)."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
        "--num_processes", str(num_processes), "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
        "-m", module,
    ]


def relaunch_if_needed(module: str, num_processes: int, mixed_precision: str = "no") -> None:
    """When more than one process is asked for and this is not already a launched process, run the stage under
    `accelerate launch` and exit with its status (the caller's code below this line then runs in the workers)."""
    if num_processes <= 1 or is_launched():
        return
    cmd = launch_command(module, num_processes, mixed_precision)
    print(f"{module}: launching {num_processes} processes: {' '.join(cmd[2:])}", flush=True)
    raise SystemExit(subprocess.call(cmd))


def shard(items: Sequence[Any], state: PartialState | None = None) -> list[Any]:
    """This process's share of `items`: every world_size-th item from its rank (deterministic, order-preserving)."""
    state = state or process_state()
    return list(items[state.process_index::state.num_processes])


def all_gather_objects(items: list[Any], state: PartialState | None = None) -> list[Any]:
    """Concatenate every process's `items` (picklable objects), in rank order, on every process."""
    state = state or process_state()
    if state.num_processes == 1:
        return list(items)
    return gather_object(items)


def all_reduce_sum(value: torch.Tensor, state: PartialState | None = None) -> torch.Tensor:
    """Sum of `value` over processes (a new tensor; the identity in one process)."""
    state = state or process_state()
    if state.num_processes == 1:
        return value
    out = value.detach().clone().to(state.device)
    torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
    return out.to(value.device)
