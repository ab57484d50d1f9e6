"""Training across processes and machines on PyTorch's own ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc_per_node N -m edgedistill run RECIPE.toml`` starts N processes with ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK`` set; :func:`init` joins them into one process group (``nccl`` on CUDA, each rank on
``cuda:LOCAL_RANK``; ``gloo`` on CPU). Without torchrun (``WORLD_SIZE`` unset or 1) every function here is a
no-op on one process, so the training loop is the same code either way.

Gradients are averaged by hand after ``backward`` (:func:`reduce_step_`: one all-reduce of one flat buffer per
optimiser step), not by ``DistributedDataParallel``: DDP fails with feature losses that read layers through
forward hooks, and its ``static_graph`` escape let the ranks' weights drift apart. Each rank's gradient is
weighted by its number of samples, so N ranks sharing a global batch take the step one process would take on
that batch.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterable, Iterator

if TYPE_CHECKING:
    import torch  # here, not at the top: the runner imports this module, and `bench` runs without torch

from .errors import EdgeDistillError, StageError

TIMEOUT_ENV = "EDGEDISTILL_DIST_TIMEOUT"  # seconds a rank waits for the others (rendezvous, collectives)


def world() -> int:
    """How many processes train together (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0 owns the run folder, the lock, the manifest and every stage that does not train."""
    return rank() == 0


def active() -> bool:
    """Whether a process group is joined; torch is not imported for it (``bench`` and ``inspect`` run without it)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized()


def init() -> None:
    """Join the process group torchrun describes (once); a no-op on one process."""
    import torch

    if world() <= 1 or active():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())
    seconds = float(os.environ.get(TIMEOUT_ENV, "1800"))
    try:
        torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=seconds))
    except Exception as e:  # noqa: BLE001 - a rendezvous that times out, an address nobody listens on
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        detail = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise EdgeDistillError(f"rank {rank()}: could not join the {world()} processes at {where} within {seconds:g} s "
                               f"({detail}); start every rank with the same torchrun --rdzv-endpoint (or raise "
                               f"{TIMEOUT_ENV}).") from None


def shutdown() -> None:
    import torch

    if active():
        torch.distributed.destroy_process_group()


def device(name: str) -> torch.device:
    """``distill.device`` for this rank: ``auto`` is ``cuda:LOCAL_RANK`` when CUDA is there, else the CPU."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank() if active() else torch.cuda.current_device())
    return torch.device(name)


def barrier() -> None:
    import torch

    if active():
        torch.distributed.barrier()


def broadcast(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank."""
    import torch

    if not active():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def gather(obj: Any) -> list:
    """Every rank's picklable ``obj``, in rank order, on every rank."""
    import torch

    if not active():
        return [obj]
    out = [None] * world()
    torch.distributed.all_gather_object(out, obj)
    return out


def sum_(values: list[float], device: torch.device | None = None) -> list[float]:
    """The sums over ranks of a few numbers (one small all-reduce)."""
    import torch

    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def sync_module_(*modules: torch.nn.Module) -> None:
    """Every parameter and buffer of ``modules`` set to rank 0's (the same start on every rank)."""
    import torch

    if not active():
        return
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            torch.distributed.broadcast(t.data, src=0)


def reduce_step_(params: Iterable[torch.nn.Parameter], modules: Iterable[torch.nn.Module], n_local: float,
                 flags: Iterable[float] = ()) -> tuple[float, list[float]]:
    """The synchronisation of one optimiser step, in a single all-reduce of one flat buffer: gradients that were
    summed over ``n_local`` samples here become the mean over the samples of every rank (a parameter without a
    gradient on a rank counts as zero there); the floating-point buffers of ``modules`` (BatchNorm's running
    statistics, QAT observers) become their mean over the ranks, so every rank keeps the same model; and the
    numbers ``n_local`` and ``flags`` are summed. Returns (all samples, the flags' sums). On one process the
    gradients are divided by ``n_local`` and nothing else changes.

    One collective per step, not one per tensor: on small models the step's cost is the collectives' latency."""
    import torch

    params, flags = [p for p in params if p.requires_grad], [float(f) for f in flags]
    if not active():
        for p in params:
            if p.grad is not None:
                p.grad.div_(n_local)
        return float(n_local), flags
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    buffers = [b for m in modules for b in m.buffers() if b.is_floating_point()]
    dev = grads[0].device if grads else torch.device("cpu")
    scalars = torch.tensor([float(n_local), *flags], dtype=torch.float32, device=dev)  # exact below 2**24 samples
    flat = torch.cat([t.reshape(-1).float() for t in [*grads, *buffers]] + [scalars])
    torch.distributed.all_reduce(flat)
    n_total, *sums = flat[-len(scalars):].tolist()
    offset = 0
    for t, divisor in [*((g, n_total) for g in grads), *((b, world()) for b in buffers)]:
        n = t.numel()
        t.copy_((flat[offset:offset + n] / divisor).view_as(t))
        offset += n
    return n_total, sums


def same_weights(module: torch.nn.Module) -> bool:
    """Whether every rank holds exactly the same parameters and buffers (compared by a hash of their bytes)."""
    import torch

    if not active():
        return True
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return len(set(gather(h.hexdigest()))) == 1


_RESUME = "re-run the same command with --resume to go on from the last checkpoint"


@contextmanager
def failures_as_errors(where: str) -> Iterator[None]:
    """Under torchrun, the ways another rank's failure reaches this one become one sentence (a StageError): a
    collective that fails because a peer is gone or silent (gloo / NCCL ``RuntimeError``), and the SIGTERM with
    which torchrun stops every rank once one has failed. A no-op on one process."""
    import torch

    if not active():
        yield
        return

    def stopped(signum, frame):
        raise StageError(f"rank {rank()}: stopped by torchrun during {where} (SIGTERM): torchrun stops every rank "
                         f"once one fails, and the first error in the log is that rank's; {_RESUME}.")

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stopped) if main_thread else None
    try:
        yield
    except RuntimeError as e:
        text = str(e).strip()
        if not (isinstance(e, torch.distributed.DistError) or "gloo" in text or "NCCL" in text):
            raise
        detail = text.splitlines()[0].split("] ", 1)[-1].split(". ")[0][:160] if text else type(e).__name__
        raise StageError(f"rank {rank()}: lost the other processes during {where} ({detail}): a rank stopped or its "
                         f"machine went down, and its own log says why; {_RESUME}.") from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
