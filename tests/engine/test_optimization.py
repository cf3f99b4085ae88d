"""engine/optimization.py: the optimizers' parameter groups in the original's order and the poly
learning rate."""
import math

import torch

from engine.optimization import build_optimizers, poly_learning_rate


def test_optimizer_groups_follow_original_order(small_model):
    sgd, adamw = build_optimizers(small_model, base_lr=0.005)
    assert len(sgd.param_groups) == 8
    first = next(small_model.down_query.parameters())
    last = list(small_model.cls_meta.parameters())[-1]
    assert sgd.param_groups[0]["params"][0] is first
    assert sgd.param_groups[7]["params"][-1] is last
    transformer_ids = {id(p) for p in small_model.transformer.parameters()}
    assert {id(p) for p in adamw.param_groups[0]["params"]} == transformer_ids
    assert adamw.param_groups[0]["lr"] == 6e-5 and adamw.param_groups[0]["weight_decay"] == 0.01
    assert sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["weight_decay"] == 1e-4
    sgd_ids = {id(p) for g in sgd.param_groups for p in g["params"]}
    trainable = {id(p) for p in small_model.parameters() if p.requires_grad}
    assert sgd_ids | transformer_ids == trainable and not sgd_ids & transformer_ids


def test_poly_learning_rate_values():
    optimizer = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]} for _ in range(3)],
                                lr=1.0)
    max_iteration = 200 * 100
    for current in (1, 57, 10_000, 19_999):
        lr = poly_learning_rate(optimizer, 0.005, current, max_iteration, power=0.9)
        expected = 0.005 * (1 - current / max_iteration) ** 0.9
        assert math.isclose(lr, expected)
        assert all(math.isclose(g["lr"], 10 * expected) for g in optimizer.param_groups)
    poly_learning_rate(optimizer, 0.005, 10, max_iteration, index_split=1)
    lrs = [g["lr"] for g in optimizer.param_groups]
    base = 0.005 * (1 - 10 / max_iteration) ** 0.9
    assert math.isclose(lrs[0], base) and math.isclose(lrs[1], base) and math.isclose(lrs[2], 10 * base)
    lr = poly_learning_rate(optimizer, 0.005, 25, max_iteration, warmup=True, warmup_step=50)
    assert math.isclose(lr, 0.005 * (0.1 + 0.9 * 25 / 50))
    lr = poly_learning_rate(optimizer, 0.005, 50, max_iteration, warmup=True, warmup_step=50)
    assert math.isclose(lr, 0.005 * (1 - 50 / max_iteration) ** 0.9)
