"""Seeding, RNG state capture, process-group setup and logging shared by the scripts."""
from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
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


def get_rng_states() -> dict:
    """All RNG states in types that ``torch.load(weights_only=True)`` accepts."""
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
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"],
                         numpy_state["cached_gaussian"]))
    python_state = states["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]),
                     python_state["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


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


def init_distributed(local_rank_argument: Optional[int] = None) -> DistributedContext:
    """Read the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK; ``--local_rank`` of
    torch.distributed.launch also works) and start NCCL on GPU or gloo on CPU. Without a
    launcher: one process on cuda:0 when available, else the CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", local_rank_argument or 0))
    use_cuda = torch.cuda.is_available() and os.environ.get("SCCAN_FORCE_CPU", "0") != "1"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    return DistributedContext(rank, world_size, local_rank, device)


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
