"""Run a training script's ``main`` on two CPU processes (torch.distributed with gloo), as
torchrun would, and collect each rank's final weights."""
import importlib
import os
import socket

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _worker(rank, world_size, port, script, argv, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), SCCAN_FORCE_CPU="1")
    torch.set_num_threads(1)
    trainer = importlib.import_module(script).main(argv)
    torch.save({k: v.cpu() for k, v in trainer.model.state_dict().items()},
               os.path.join(out_dir, f"rank{rank}.pt"))


def train_on_two_processes(script: str, argv: list, out_dir: str) -> list:
    """``script`` (a module name such as 'train_sccan') trained by 2 gloo ranks; returns the
    state_dict of each rank after training."""
    mp.spawn(_worker, args=(2, free_port(), script, argv, str(out_dir)), nprocs=2, join=True)
    return [torch.load(os.path.join(str(out_dir), f"rank{rank}.pt"), weights_only=True)
            for rank in range(2)]
