"""bf16 autocast (config key ``amp: bf16``) on the CPU: a small SCCAN trained here on a synthetic
task predicts the same pixels in bf16 as in fp32 (at least 99.5% of them)."""
import torch

from model.backbone import Backbone, calibrate_frozen_batch_norm, initialise_random_backbone
from model.builder import build_optimizers
from model.sccan import SCCAN
from util.runtime import autocast

SIZE = 33
CPU = torch.device("cpu")


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
        _, loss, _, _ = model(x, s_x, s_y, y)
        sgd.zero_grad()
        adamw.zero_grad()
        loss.backward()
        sgd.step()
        adamw.step()
    return model.eval()


def test_bf16_predictions_agree_with_fp32_on_a_trained_model():
    model = train_small_model()
    x, s_x, s_y, y = square_episodes(16, torch.Generator().manual_seed(1))  # held-out episodes
    with torch.no_grad():
        fp32 = model(x, s_x, s_y)
        with autocast(CPU, "bf16"):
            bf16 = model(x, s_x, s_y)
            assert model.down_query[0](torch.randn(1, 1536, 2, 2)).dtype == torch.bfloat16  # autocast is on
    assert bf16.dtype == torch.float32  # logits leave the model as float32
    prediction, prediction_bf16 = fp32.argmax(1), bf16.argmax(1)
    foreground = (prediction == 1) & (y == 1)
    assert foreground.sum() / ((prediction == 1) | (y == 1)).sum() > 0.4  # it did learn the task
    assert not torch.equal(fp32, bf16)  # bf16 really ran
    assert (prediction == prediction_bf16).float().mean() >= 0.995
