"""What the speed benchmarks (bench_model, bench_train, bench_eval) share: the variants they
compare, device synchronisation, peak-memory reading and the machine line of their tables."""
from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import torch

from util.cli import UserError
from util.config_schema import range_problems
from util.runtime import cuda_usable


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


def parse_device(text: str, option: str = "--device") -> torch.device:
    """``text`` as a device this machine has (cpu, cuda, cuda:<index>), before any work; else a
    :class:`UserError` naming ``option``."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"{option} {text!r}: not a device; expected cpu, cuda or cuda:<index>") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"{option} {text}: the benchmarks run on cpu, cuda or cuda:<index>")
    if device.type == "cuda":
        if not cuda_usable():
            raise UserError(f"{option} {text}: no usable CUDA device (PyTorch sees none, or "
                            f"SCCAN_FORCE_CPU=1 is set); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"{option} {text}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return device


def check_options_as_config(groups: Iterable[Dict[str, Tuple[str, Any]]]) -> None:
    """A tool's options that set config keys, checked before any work against the ranges the
    config's values must meet (util/config_schema.py), each problem naming the tool's option
    (not --opts). ``groups``: ``{config key: (option, value)}`` mappings whose keys are checked
    together (relations such as feature_size and window_size)."""
    problems = []
    for group in groups:
        values = {key: value for key, (_, value) in group.items()}
        problems += range_problems(values, lambda key, group=group: f" (from {group[key][0]})")
    if problems:
        raise UserError("; ".join(dict.fromkeys(problems)))


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
