"""Data parallelism on accelerate: the prompts of one call split across the processes ``accelerate launch`` starts.

Under ``accelerate launch --num_processes N`` on N GPUs (or ``torchrun``) every process runs the same program. A call
such as ``trace(model, prompts)`` then splits its work with ``PartialState().split_between_processes``, each
process runs its share on its own device, and ``gather_object`` brings the pieces back to every process in
prompt order, so all processes return the same result. Only the main process writes a cache file (once,
atomically: ``common.cache``); the others wait for it (``wait_for_everyone``). Outside ``accelerate launch``
(one process, a notebook) nothing here does anything: ``process_state()`` is None.

The processes must share the file system that holds ``data/`` (one machine, or a shared folder on a cluster).

On CPUs only: ``accelerate launch --cpu --num_processes 2`` starts ONE process in accelerate 1.15 (its CPU
launcher needs ``mpirun`` for more); ``accelerate launch --multi_gpu --num_processes 2`` (torchrun underneath)
starts two, and with no accelerator (or ``ACCELERATE_USE_CPU=true``) they run on the CPU over gloo.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def process_state(distributed: bool | None = None):
    """accelerate's ``PartialState`` when this process is one of several (``WORLD_SIZE > 1``, as set by
    ``accelerate launch`` and ``torchrun``), else None. ``distributed=False`` forces None (every process works
    alone on what it is given); ``None`` (default) decides from the environment."""
    if distributed is False:
        return None
    if distributed is None and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    # CPU processes (gloo) when asked (ACCELERATE_USE_CPU, set by `accelerate launch --cpu`) or when there is no
    # accelerator: PartialState reads only its `cpu` argument, and without it CPU processes would not connect.
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")
    state = PartialState(cpu=use_cpu or not torch.accelerator.is_available())
    return state if state.num_processes > 1 else None


def my_share(state, items: Sequence[T]) -> list[T]:
    """This process's items: ``items[rank::N]`` (round robin, so that length-sorted batches spread evenly),
    through ``split_between_processes`` on the interleaved list (its contiguous chunks are exactly these)."""
    if state is None:
        return list(items)
    n = state.num_processes
    interleaved = [x for rank in range(n) for x in items[rank::n]]
    with state.split_between_processes(interleaved) as mine:
        return list(mine)


def gather(state, items: list) -> list:
    """Every process's ``items`` (picklable), concatenated in process order, on every process."""
    if state is None:
        return items
    from accelerate.utils import gather_object

    return gather_object(items)


def all_true(state, flag: bool) -> bool:
    """Whether ``flag`` holds on every process (a collective: every process must call it)."""
    if state is None:
        return bool(flag)
    return all(gather(state, [bool(flag)]))


def is_main(state) -> bool:
    return state is None or state.is_main_process


def wait(state) -> None:
    if state is not None:
        state.wait_for_everyone()


def run_batches(state, n_batches: int, work: Callable[[int], T], *, desc: str, progress: bool) -> list[tuple[int, T]]:
    """``work(b)`` for this process's share of batches ``0..n_batches-1`` (a progress bar on the main process),
    then every process's ``(b, result)`` gathered on every process, in batch order."""
    from tqdm.auto import tqdm

    mine = my_share(state, list(range(n_batches)))
    done = [(b, work(b)) for b in tqdm(mine, desc=desc, disable=not progress or len(mine) < 3 or not is_main(state))]
    return sorted(gather(state, done), key=lambda item: item[0])
