"""Every trainable parameter of SCCAN receives its gradient in its own strides: otherwise
DistributedDataParallel warns "Grad strides do not match bucket view strides" and copies that
gradient every step on every GPU (issue 16, item 9: the 1x1 convolutions fed channels-last
inputs, see model.sccan.lay_out_like_gradient)."""
import os
import subprocess
import sys

import pytest
import torch

from model.backbone import Backbone, initialise_random_backbone
from model.sccan import SCCAN, lay_out_like_gradient
from tests.support.cuda import cuda_device, cuda_test

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# The 1x1 convolutions whose inputs can be channels-last (the ones that warned before the fix).
CHANNELS_LAST_INPUTS = ("ASPP_meta.layer6_0.0.weight", "ASPP_meta.layer6_1.0.weight",
                        "down_query.0.weight", "down_supp.0.weight")


def _mismatched_gradients(device: torch.device, fast_training: bool, round_trip: bool = False):
    """Names, strides and gradient strides of the parameters of a small SCCAN (2-shot) whose
    gradient after one training backward has other strides than the parameter."""
    torch.manual_seed(0)
    backbone = Backbone(50)
    initialise_random_backbone(backbone, residual_gain=0.1)
    model = SCCAN(backbone, shot=2, feature_size=8, window_size=4, feature_dropout=0.0,
                  fast_path=not fast_training, fast_path_training=fast_training).to(device)
    if round_trip:  # a validation in the other path between two training steps
        model.eval()
        model.train()
    model.train()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 33, 33, generator=generator)
    s_x = torch.randn(2, 2, 3, 33, 33, generator=generator)
    s_y = (torch.rand(2, 2, 33, 33, generator=generator) > 0.5).float()
    y = (torch.rand(2, 33, 33, generator=generator) > 0.5).long()
    loss = model.losses(model(x.to(device), s_x.to(device), s_y.to(device)), y.to(device))["main_loss"]
    loss.backward()
    with_gradients = {name: parameter for name, parameter in model.named_parameters()
                      if parameter.grad is not None}
    assert set(CHANNELS_LAST_INPUTS) <= set(with_gradients)  # the test can tell
    return [(name, parameter.stride(), parameter.grad.stride())
            for name, parameter in with_gradients.items() if parameter.grad.stride() != parameter.stride()]


@pytest.mark.parametrize("fast_training,round_trip", [(False, False), (True, False), (False, True)])
def test_every_gradient_has_its_parameters_strides(fast_training, round_trip):
    assert _mismatched_gradients(torch.device("cpu"), fast_training, round_trip) == []


@cuda_test
@pytest.mark.parametrize("fast_training", [False, True])
def test_every_gradient_has_its_parameters_strides_on_cuda(fast_training):
    assert _mismatched_gradients(cuda_device(), fast_training) == []


def test_layout_changes_strides_only():
    weight = torch.nn.Parameter(torch.randn(4, 6, 1, 1))
    values, address = weight.detach().clone(), weight.data_ptr()
    lay_out_like_gradient(weight, channels_last=True)
    assert weight.stride() == (6, 1, 6, 6) and weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(weight, values) and weight.data_ptr() == address and weight.is_contiguous()
    lay_out_like_gradient(weight, channels_last=False)
    assert weight.stride() == (6, 1, 1, 1) and torch.equal(weight, values)
    with pytest.raises(ValueError, match="1x1 convolution weight"):
        lay_out_like_gradient(torch.nn.Parameter(torch.randn(4, 6, 3, 3)), channels_last=True)


DDP_STEP = """
import warnings
import torch, torch.distributed as dist
from tests.support.distributed import ddp_and_plain_training_steps, free_port
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
with warnings.catch_warnings():
    warnings.filterwarnings("error", message="Grad strides do not match")
    ddp_and_plain_training_steps(torch.device("cpu"), steps=1)
dist.destroy_process_group()
"""


def test_a_ddp_step_does_not_warn_about_grad_strides():
    """In a fresh process: PyTorch warns once per process, so an earlier DDP test of the same
    session would otherwise hide the warning."""
    completed = subprocess.run([sys.executable, "-c", DDP_STEP], capture_output=True, text=True,
                               timeout=300, cwd=REPOSITORY)
    assert completed.returncode == 0, completed.stderr[-2000:]
