"""What the speed benchmarks (bench_model, bench_train, bench_eval) share: the variants they
compare, device synchronisation, peak-memory reading and the machine line of their tables."""
from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import torch


class Variant(NamedTuple):
    """A way of running the same model: its forward path, arithmetic and optimizer steps."""
    fast_path: bool
    amp: str
    fast_steps: bool    # multi-tensor optimizer steps and no per-iteration loss read (training)


VARIANTS: Dict[str, Variant] = {
    # the straightforward path written like the original, fp32, one-tensor optimizer steps and
    # the loss read every iteration: the code before the speed work
    "reference": Variant(fast_path=False, amp="fp32", fast_steps=False),
    # training's default: the straightforward forward, multi-tensor steps, no per-step read
    "fast-steps": Variant(fast_path=False, amp="fp32", fast_steps=True),
    "fast": Variant(fast_path=True, amp="fp32", fast_steps=True),
    "fast-bf16": Variant(fast_path=True, amp="bf16", fast_steps=True),
}


def add_variant_argument(parser, default: Sequence[str] = ("reference", "fast")) -> None:
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(default),
                        help=f"what to compare (default: {' '.join(default)}): reference = the "
                             f"straightforward fp32 path (and, training, one-tensor optimizer steps "
                             f"and a loss read per step: the code before the speed work); "
                             f"fast-steps = training's default (the straightforward forward with "
                             f"multi-tensor steps, no per-step read); fast = the fast fp32 path "
                             f"(evaluation's default; fast_path_training for training); fast-bf16 = "
                             f"the fast path under bf16 autocast")


def set_strict_fp32(device: torch.device) -> None:
    """fp32 means fp32: no TF32 matrix products on CUDA (their 10-bit mantissa is what bf16
    trades against, so the comparison must not hide it)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int:
    """Peak allocated bytes since the last reset (0 off CUDA)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def format_memory(size: int) -> str:
    return f"{size / 2 ** 30:.2f} GiB" if size else "-"


def timed(function: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call, the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def median(values: List[float]) -> float:
    return statistics.median(values)


def processor_name() -> str:
    """The CPU model ('AMD EPYC', ...) from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def header(tool: str, argv: Optional[Sequence[str]], details: str) -> str:
    """The command and machine lines printed above a benchmark table."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = f"python -m tools.{tool} " + " ".join(shlex.quote(argument) for argument in arguments)
    machine = (f"{platform.machine()} ({processor_name()}), {os.cpu_count()} CPU cores, "
               f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if torch.cuda.is_available():
        machine += f", {torch.cuda.get_device_name(0)} (TF32 off)"
    return f"command: `{command.strip()}`\nmachine: {machine}\n{details}\n"
