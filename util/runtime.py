"""Seeding, RNG state capture, process-group setup and logging shared by the scripts."""
from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed torch (CPU and CUDA), numpy and random, like the original ``setup_seed``."""
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    np.random.seed(seed)
    random.seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def cuda_usable() -> bool:
    """True when CUDA is present and not switched off with ``SCCAN_FORCE_CPU=1`` (the test
    suite sets it for every test not marked ``cuda``, so that a GPU machine runs the CPU tests,
    bit-exact ones included, on the CPU)."""
    return os.environ.get("SCCAN_FORCE_CPU", "0") != "1" and torch.cuda.is_available()


def default_device() -> torch.device:
    """The device a script uses without a launcher: cuda (the current device) when usable, else
    the CPU."""
    return torch.device("cuda") if cuda_usable() else torch.device("cpu")


def get_rng_states() -> dict:
    """All RNG states of this process in types that ``torch.load(weights_only=True)`` accepts.

    Only the current CUDA device's generator is captured: a process (one DDP rank) draws on its
    own device alone, and a state per visible GPU could not be restored on a machine with fewer.
    """
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
                  "position": int(numpy_state[2]), "has_gauss": int(numpy_state[3]),
                  "cached_gaussian": float(numpy_state[4])},
        "python": {"version": python_state[0], "state": list(python_state[1]),
                   "gauss_next": python_state[2]},
    }
    if cuda_usable():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _host_bytes(state: torch.Tensor, name: str) -> torch.Tensor:
    # Generators take CPU byte tensors only; a checkpoint loaded with map_location='cuda' holds
    # its saved states on the GPU.
    if not isinstance(state, torch.Tensor) or state.device.type == "meta":
        raise ValueError(f"RNG state {name!r}: expected a byte tensor with data, got "
                         f"{type(state).__name__}" + (" on the meta device" if
                                                       isinstance(state, torch.Tensor) else ""))
    return state.to(device="cpu", dtype=torch.uint8)


def cuda_rng_state_for_this_device(saved, device_index: int) -> Optional[torch.Tensor]:
    """The saved CUDA generator state this process restores: one tensor (the saver's own device,
    written since per-device capture) is used as it is; a list of one state per visible GPU
    (earlier checkpoints) gives the entry of ``device_index``, or the first when the saving
    machine had fewer GPUs. None when nothing was saved."""
    if saved is None:
        return None
    if isinstance(saved, (list, tuple)):
        if not saved:
            return None
        return saved[device_index] if device_index < len(saved) else saved[0]
    return saved


RNG_STATE_KEYS = ("torch", "numpy", "python")


def _whole(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def rng_states_problem(states) -> Optional[str]:
    """What makes ``states`` (a checkpoint's copy of :func:`get_rng_states`) unusable by
    :func:`set_rng_states` (a missing generator, a state a generator refuses), or None."""
    if not isinstance(states, Mapping):
        return (f"RNG states: expected a dict of the states {', '.join(map(repr, RNG_STATE_KEYS))}, "
                f"got {type(states).__name__}")
    missing = [key for key in RNG_STATE_KEYS if key not in states]
    if missing:
        return (f"RNG states lack {', '.join(map(repr, missing))} (expected "
                f"{', '.join(map(repr, RNG_STATE_KEYS))}, as get_rng_states saves them)")
    state = states["torch"]
    if not isinstance(state, torch.Tensor) or state.device.type == "meta":
        return (f"RNG state 'torch': expected a byte tensor with data, got {type(state).__name__}" +
                (" on the meta device" if isinstance(state, torch.Tensor) else ""))
    # Each state is tried on a fresh generator: the process's own ones stay untouched.
    try:
        torch.Generator().set_state(state.to(device="cpu", dtype=torch.uint8))
    except RuntimeError:
        return (f"RNG state 'torch': {state.numel()} values are not a state of torch's CPU generator "
                f"({torch.get_rng_state().numel()} bytes)")
    numpy_state, python_state = states["numpy"], states["python"]
    # The generators accept some out-of-range values and draw wrongly from them later.
    if isinstance(numpy_state, Mapping) and not (
            _whole(numpy_state.get("position"), 0, 624) and _whole(numpy_state.get("has_gauss"), 0, 1)
            and _real(numpy_state.get("cached_gaussian"))):
        return (f"RNG state 'numpy': expected 'position' 0..624, 'has_gauss' 0 or 1 and a finite "
                f"'cached_gaussian', got {numpy_state.get('position')!r}, {numpy_state.get('has_gauss')!r} "
                f"and {numpy_state.get('cached_gaussian')!r}")
    if isinstance(python_state, Mapping) and not (python_state.get("gauss_next") is None or
                                                  _real(python_state.get("gauss_next"))):
        return (f"RNG state 'python': 'gauss_next' is {python_state.get('gauss_next')!r}, expected None "
                f"or a number")
    try:
        keys = numpy_state["keys"]
        keys = keys.cpu().numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        np.random.RandomState().set_state(("MT19937", keys.astype(np.uint32), numpy_state["position"],
                                           numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        return (f"RNG state 'numpy': expected 'keys' (624 values), 'position', 'has_gauss' and "
                f"'cached_gaussian' of numpy's MT19937 ({type(error).__name__}: {error})")
    try:
        random.Random().setstate((python_state["version"], tuple(python_state["state"]),
                                  python_state["gauss_next"]))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        return (f"RNG state 'python': expected 'version', 'state' (625 numbers) and 'gauss_next' of "
                f"random.getstate() ({type(error).__name__}: {error})")
    cuda = states.get("cuda")
    for item in cuda if isinstance(cuda, (list, tuple)) else [] if cuda is None else [cuda]:
        if not isinstance(item, torch.Tensor) or item.device.type == "meta":
            return (f"RNG state 'cuda': expected a byte tensor with data (or a list of them), got "
                    f"{type(item).__name__}")
    return None


def set_rng_states(states: dict) -> None:
    """Restore what :func:`get_rng_states` captured (tensors on any device, CUDA's when usable).
    States a generator would refuse are a ValueError before any generator is changed."""
    problem = rng_states_problem(states)
    if problem:
        raise ValueError(problem)
    torch.set_rng_state(_host_bytes(states["torch"], "torch"))
    numpy_state = states["numpy"]
    keys = numpy_state["keys"]
    keys = keys.cpu().numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state(("MT19937", keys.astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = states["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]),
                     python_state["gauss_next"]))
    if cuda_usable():
        cuda_state = cuda_rng_state_for_this_device(states.get("cuda"), torch.cuda.current_device())
        if cuda_state is not None:
            torch.cuda.set_rng_state(_host_bytes(cuda_state, "cuda"))


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(local_rank_argument: Optional[int] = None,
                     timeout_minutes: float = 60.0) -> DistributedContext:
    """Read the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK; ``--local_rank`` of
    torch.distributed.launch also works) and start NCCL on GPU or gloo on CPU. Without a
    launcher: one process on cuda:0 when available, else the CPU.

    ``timeout_minutes`` bounds how long a collective waits for the slowest rank (config key
    distributed_timeout_minutes). NCCL's default of 10 minutes is shorter than what rank 0 alone
    may still spend between two collectives: building COCO's few-shot lists on a first run, or
    writing a checkpoint to a slow shared disk."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", local_rank_argument or 0))
    use_cuda = cuda_usable()
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistributedContext(rank, world_size, local_rank, device)


def gather_from_ranks(value, context: "DistributedContext") -> list:
    """``[value of rank 0, value of rank 1, ...]`` on every rank (any picklable value; tensors
    are best on the CPU); ``[value]`` in a single process."""
    if not context.distributed:
        return [value]
    values = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values


def limit_opencv_threads(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: OpenCV single-threaded and without OpenCL in each loader
    worker, as the original sets for its processes. Each worker already runs on its own core; an
    OpenCV pool per worker (8 workers per GPU, several GPUs) would oversubscribe the CPUs that
    feed the GPUs. It draws no random number, so the episodes stay those of the original."""
    import cv2

    cv2.setNumThreads(0)
    cv2.ocl.setUseOpenCL(False)


def get_logger(name: str = "sccan", log_file: Optional[str] = None, main: bool = True) -> logging.Logger:
    """Console + file logger; non-main ranks only log warnings and errors."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.setLevel(logging.INFO if main else logging.WARNING)
    logger.propagate = False
    formatter = logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    if log_file and main:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger


class _NoProgress:
    """Stands in for a tqdm bar where none is shown (other ranks, quiet runs)."""

    def update(self, count: int = 1) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, description: str, show: bool = True):
    """A tqdm bar, or an object with the same update/set_postfix/close that shows nothing."""
    if not show:
        return _NoProgress()
    from tqdm import tqdm
    return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)


AMP_MODES = ("fp32", "bf16")


def check_amp(amp: str) -> str:
    """``amp`` if it is one of :data:`AMP_MODES`, else a ValueError naming the config key."""
    if amp not in AMP_MODES:
        raise ValueError(f"config key amp: expected one of {', '.join(map(repr, AMP_MODES))}, "
                         f"got {amp!r}")
    return amp


def autocast(device: torch.device, amp: str):
    """The context of forward passes: nothing for 'fp32'; for 'bf16', ``torch.autocast`` to
    bfloat16 on ``device``'s type (matrix products and convolutions in bfloat16, reductions and
    normalisations in float32; SCCAN keeps its prior in float32 and returns float32 logits)."""
    if check_amp(amp) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
