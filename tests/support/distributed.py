"""Run a training script's ``main`` on two CPU processes (torch.distributed with gloo), as
torchrun would, and collect each rank's final weights (and, on request, the samples each rank
drew and its first step, to check that step against a one-process computation); compare
DistributedDataParallel steps with plain ones in an initialised single-process group."""
import contextlib
import copy
import importlib
import json
import os
import socket

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _record_the_training(trainer_module) -> dict:
    """Make ``trainer_module`` (engine.trainer or engine.base_trainer) record, in this process: the
    dataset index of every training sample it loads, and around its first step the weights
    before and after it, the step's batch and forward inputs and the RNG state its forward
    starts from (dropout).
    Returns the record, filled as the training runs (``after`` when the second step starts)."""
    drawn, inputs = [], []
    record = {"drawn": drawn}

    def recording_loader(dataset, *args, **kwargs):
        loaded = type(dataset)

        class Recording(loaded):
            def __getitem__(self, index):
                drawn.append(int(index))
                return loaded.__getitem__(self, index)
        dataset.__class__ = Recording
        loader, sampler = build_train_loader(dataset, *args, **kwargs)
        return RecordingLoader(loader), sampler

    class RecordingLoader:
        def __init__(self, loader):
            self.loader = loader

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            for batch in self.loader:
                # The first step's, by field name (a plain dict: the record is read back with
                # weights_only, which knows no named tuples).
                record.setdefault("batch", batch._asdict())
                yield batch

    def recording_network(model, context, **kwargs):
        network = distributed_network(model, context, **kwargs)

        def forward(*args, **kwargs):
            if not inputs:
                record.update(before=copy.deepcopy(model.state_dict()), rng=torch.get_rng_state())
            elif len(inputs) == 1:  # the first step's optimizer steps are done
                record.update(after=copy.deepcopy(model.state_dict()), inputs=inputs[0])
            inputs.append((args, kwargs))
            return network(*args, **kwargs)
        return forward

    build_train_loader, distributed_network = trainer_module.build_train_loader, trainer_module.distributed_network
    trainer_module.build_train_loader = recording_loader
    trainer_module.distributed_network = recording_network
    return record


def _worker(rank, world_size, port, script, argv, out_dir, record):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), SCCAN_FORCE_CPU="1")
    torch.set_num_threads(1)
    recorded = _record_the_training(importlib.import_module(record)) if record else None
    trainer = importlib.import_module(script).main(argv)
    if recorded is not None:
        torch.save(recorded, os.path.join(out_dir, f"rank{rank}_training.pt"))
    torch.save({k: v.cpu() for k, v in trainer.model.state_dict().items()},
               os.path.join(out_dir, f"rank{rank}.pt"))
    best = trainer.state.best
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump({"validation": trainer.last_validation, "epochs": trainer.state.epoch,
                   "best": {"epoch": best.epoch, "miou": best.miou, "path": best.path}}, handle)


def train_on_two_processes(script: str, argv: list, out_dir: str, record: str = "") -> list:
    """``script`` (a module name such as 'train_sccan') trained by 2 gloo ranks; returns the
    state_dict of each rank after training. ``record`` (the trainer's module, 'engine.trainer' or
    'engine.base_trainer'): each rank also records its samples and first step
    (:func:`recorded_training`; the run needs two steps or more)."""
    mp.spawn(_worker, args=(2, free_port(), script, argv, str(out_dir), record), nprocs=2, join=True)
    return [torch.load(os.path.join(str(out_dir), f"rank{rank}.pt"), weights_only=True)
            for rank in range(2)]


def recorded_training(out_dir: str) -> list:
    """What each rank of ``train_on_two_processes(..., record=...)`` recorded: ``drawn`` (the
    dataset indices of its training samples, in order), ``before`` / ``after`` (the weights
    around its first step), ``inputs`` (that step's forward arguments, ``(args, kwargs)``) and
    ``rng`` (the CPU RNG state the forward started from)."""
    return [torch.load(os.path.join(str(out_dir), f"rank{rank}_training.pt"), weights_only=True)
            for rank in range(2)]


@contextlib.contextmanager
def one_thread_as_in_each_rank():
    """torch on one thread inside the block, as in each rank of :func:`train_on_two_processes`:
    the same convolution kernels, so that one-process computations match the ranks' bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def averaged_reference_step(model, optimizers, records, loss_of) -> None:
    """What DistributedDataParallel's step must equal, computed in one process (on one thread,
    as each rank): each rank's first-step forward on its own batch from its own RNG state (its
    dropout masks), the mean of the ranks' losses backward (DDP averages the gradients), one step
    of every optimizer. ``loss_of(output, batch)``: the scalar training loss of one forward's
    output on its batch (a dict of the batch's fields)."""
    with one_thread_as_in_each_rank():
        losses = []
        for record in records:
            torch.set_rng_state(record["rng"])
            args, kwargs = record["inputs"]
            losses.append(loss_of(model(*args, **kwargs), record["batch"]))
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        (sum(losses) / len(losses)).backward()
        for optimizer in optimizers:
            optimizer.step()


def rank_results(out_dir: str) -> list:
    """What each rank of :func:`train_on_two_processes` ended with: its last validation result
    (``validation``, None without validation), its completed epochs (``epochs``) and its
    best-checkpoint record (``best``)."""
    results = []
    for rank in range(2):
        with open(os.path.join(str(out_dir), f"rank{rank}.json")) as handle:
            results.append(json.load(handle))
    return results


def ddp_and_plain_training_steps(device: torch.device, steps: int = 3):
    """A small SCCAN trained for ``steps`` seeded steps twice on ``device``, plainly and wrapped
    in DistributedDataParallel (the process group must be initialised); returns the initial,
    the plain and the wrapped state dicts. With one process the all-reduce changes nothing, so
    the last two must agree."""
    from torch.nn.parallel import DistributedDataParallel

    from model.backbone import Backbone, initialise_random_backbone
    from engine.optimization import build_optimizers
    from model.sccan import SCCAN
    from engine.trainer import fast_optimizer_steps

    torch.manual_seed(0)
    backbone = Backbone(50)
    initialise_random_backbone(backbone, residual_gain=0.1)
    plain = SCCAN(backbone, shot=1, feature_size=8, window_size=4, feature_dropout=0.0).to(device)
    initial = copy.deepcopy(plain.state_dict())
    wrapped_model = copy.deepcopy(plain)
    wrapped = DistributedDataParallel(wrapped_model, device_ids=[device.index or 0] if device.type == "cuda"
                                      else None, find_unused_parameters=True)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(2, 3, 33, 33, generator=generator),
                torch.randn(2, 1, 3, 33, 33, generator=generator),
                (torch.rand(2, 1, 33, 33, generator=generator) > 0.5).float(),
                (torch.rand(2, 33, 33, generator=generator) > 0.5).long()) for _ in range(steps)]
    for model, forward in ((plain, plain), (wrapped_model, wrapped)):
        sgd, adamw = build_optimizers(model, 0.005)
        fast_optimizer_steps(sgd, adamw)
        model.train()
        torch.manual_seed(1)  # the same dropout masks (cls_meta's Dropout2d) for both models
        for x, s_x, s_y, y in batches:
            loss = plain.losses(forward(x.to(device), s_x.to(device), s_y.to(device)), y.to(device))["main_loss"]
            sgd.zero_grad()
            adamw.zero_grad()
            loss.backward()
            sgd.step()
            adamw.step()
    return initial, plain.state_dict(), wrapped_model.state_dict()
