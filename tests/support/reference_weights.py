"""The deterministic weight generator of the parity fixture made with the original implementation
(tests/fixtures/sccan_parity_fixture.pt)."""
import math

import torch


def generate_reference_weights(model: torch.nn.Module) -> dict:
    """Fill every state_dict entry, walking the keys in sorted() order with one generator."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, value in sorted(model.state_dict().items()):
        shape = value.shape
        if len(shape) >= 2:
            tensor = torch.randn(shape, generator=generator) * math.sqrt(2 / math.prod(shape[1:]))
        elif key.endswith("running_var"):
            tensor = torch.rand(shape, generator=generator) + 0.5
        else:
            tensor = torch.randn(shape, generator=generator) * 0.1 + (
                1.0 if key.endswith(".weight") else 0.0)
        state[key] = tensor
    model.load_state_dict(state, strict=True)
    return state
