"""A synthetic few-shot task and a small SCCAN trained on it in seconds (tests that need a model
that has learned something, e.g. the CUDA agreement tests): noise images holding a square of
one 'object' colour."""
import torch

from engine.optimization import build_optimizers
from model.backbone import Backbone, calibrate_frozen_batch_norm, initialise_random_backbone
from model.sccan import SCCAN

SIZE = 33


def square_episodes(count: int, generator: torch.Generator):
    """``count`` 1-shot episodes: noise images holding one square of the same 'object' (a colour
    shift); the query label marks its square, the support shows another square of it."""
    def image_with_square():
        image = torch.randn(3, SIZE, SIZE, generator=generator) * 0.5
        label = torch.zeros(SIZE, SIZE, dtype=torch.long)
        side = int(torch.randint(10, 18, (1,), generator=generator))
        top, left = (int(v) for v in torch.randint(0, SIZE - side, (2,), generator=generator))
        image[:, top:top + side, left:left + side] += torch.tensor([1.5, -1.0, 0.5]).view(3, 1, 1)
        label[top:top + side, left:left + side] = 1
        return image, label

    queries = [image_with_square() for _ in range(count)]
    supports = [image_with_square() for _ in range(count)]
    x = torch.stack([image for image, _ in queries])  # (B, 3, H, W)
    y = torch.stack([label for _, label in queries])  # (B, H, W)
    s_x = torch.stack([image for image, _ in supports]).unsqueeze(1)  # (B, 1, 3, H, W)
    s_y = torch.stack([label for _, label in supports]).unsqueeze(1).float()  # (B, 1, H, W)
    return x, s_x, s_y, y


def train_small_model(iterations: int = 80) -> SCCAN:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    backbone = Backbone(50)
    initialise_random_backbone(backbone, residual_gain=0.1)
    calibrate_frozen_batch_norm(backbone, square_episodes(8, generator)[0])
    model = SCCAN(backbone, shot=1, feature_size=8, window_size=4, feature_dropout=0.0)
    sgd, adamw = build_optimizers(model, base_lr=0.005, transformer_lr=5e-4)
    model.train()
    for _ in range(iterations):
        x, s_x, s_y, y = square_episodes(4, generator)
        loss = model.losses(model(x, s_x, s_y), y)["main_loss"]
        sgd.zero_grad()
        adamw.zero_grad()
        loss.backward()
        sgd.step()
        adamw.step()
    return model.eval()
