"""The saved training state around a model's weights: the training config a checkpoint records
(checked against the config schema) and the optimizer states a resumed run loads (checked
against the optimizers they are loaded into). The weights themselves are checked by
model/checkpoint.py."""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional

import torch

from model.checkpoint import CheckpointError, describe_value, non_finite_count
from util.config_schema import SCHEMA, check_type, range_problems

__all__ = ["check_optimizer_state", "stored_config"]


def stored_config(checkpoint, source: str, keys: Iterable[str]) -> Optional[dict]:
    """The training config a checkpoint records under 'config' (None when it records none),
    its values of ``keys`` checked for type and range: a stored config that is not a dict, or a
    bad value, is a :class:`CheckpointError` naming ``source`` and the key (the value would
    otherwise be used as it is: int('one'), a 0-shot note)."""
    if not isinstance(checkpoint, Mapping) or checkpoint.get("config") is None:
        return None
    saved = checkpoint["config"]
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"{source}: its 'config' is {describe_value(saved)}, expected the training "
                              f"config (a dict of config keys)")
    checked, problems = {}, []
    for key in keys:
        if key in saved and key in SCHEMA:
            try:
                check_type(key, saved[key], convert=False)
                checked[key] = saved[key]
            except TypeError as error:
                problems.append(f"config key {key} {error}")
    problems += range_problems(checked)
    if problems:
        raise CheckpointError(f"{source}: its stored training config is damaged: {problems[0]}")
    return dict(saved)


def _finite_number(value) -> bool:
    """A hyperparameter of an optimizer's group: a finite number, a one-value tensor of one, or a
    tuple of them (AdamW's betas)."""
    if isinstance(value, (list, tuple)):
        return all(_finite_number(item) for item in value)
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and non_finite_count(value) == 0
    return _is_number(value) and math.isfinite(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _hyperparameter_problem(own, saved) -> Optional[str]:
    """What ``saved`` should be, where it is not of the kind of the optimizer's own ``own``."""
    if _is_number(own) and (isinstance(saved, (list, tuple)) or not _finite_number(saved)):
        return "a finite number"
    if isinstance(own, tuple) and not (isinstance(saved, (list, tuple)) and len(saved) == len(own)
                                       and _finite_number(saved)):
        return f"{len(own)} finite numbers"
    if isinstance(own, bool) and not isinstance(saved, (bool, type(None))):
        return "True or False"
    return None


def check_optimizer_state(saved, optimizer: torch.optim.Optimizer, source: str, key: str,
                          names: Optional[Mapping] = None) -> None:
    """Raise :class:`CheckpointError` naming ``source`` and ``key`` unless ``saved`` is a state
    of ``optimizer`` (torch's ``load_state_dict`` checks only the group sizes, and a state
    tensor of another shape or NaN momentum would surface mid-training): a dict with 'state'
    and 'param_groups', as many groups of as many parameters as the optimizer's, finite
    hyperparameters where the optimizer has numbers, and per parameter dense, finite tensors of
    the parameter's shape (or scalars, such as 'step') and finite numbers. ``names``:
    parameter -> name, for the messages."""
    where = f"{source}: {key!r}"
    groups = saved.get("param_groups") if isinstance(saved, Mapping) else None
    if not isinstance(saved, Mapping) or not isinstance(saved.get("state"), Mapping) or \
            not isinstance(groups, (list, tuple)):
        raise CheckpointError(f"{where} is {describe_value(saved)}, expected an optimizer state_dict "
                              f"(a dict with 'state' and 'param_groups')")
    kind = type(optimizer).__name__
    if len(groups) != len(optimizer.param_groups):
        raise CheckpointError(f"{where} has {len(groups)} parameter group(s), this config's {kind} "
                              f"{len(optimizer.param_groups)}")
    parameters = {}
    for number, (group, own) in enumerate(zip(groups, optimizer.param_groups)):
        parameters.update(_checked_group(group, own, number, where, kind))
    for index, state in saved["state"].items():
        if index not in parameters:
            raise CheckpointError(f"{where} holds a state for parameter {index!r}, which no parameter "
                                  f"group lists")
        parameter = parameters[index]
        label = f"parameter {index}" + (f" ({names[parameter]})" if names and parameter in names else "")
        _check_parameter_state(state, parameter, where, label)


def _checked_group(group, own: Mapping, number: int, where: str, kind: str) -> dict:
    """{saved parameter index: the optimizer's parameter} of a saved parameter group checked
    against the optimizer's own group ``own``."""
    indices = group.get("params") if isinstance(group, Mapping) else None
    if not isinstance(indices, (list, tuple)) or not all(type(index) is int for index in indices):
        raise CheckpointError(f"{where}: parameter group {number} is {describe_value(group)}, expected "
                              f"a dict with 'params' (a list of parameter indices)")
    if len(indices) != len(own["params"]):
        raise CheckpointError(f"{where}: parameter group {number} holds {len(indices)} parameters, "
                              f"this config's {kind} {len(own['params'])}")
    # load_state_dict takes the saved hyperparameters (momentum, betas, nesterov, ...) as
    # they are: each must be of the kind the optimizer has.
    for name, value in own.items():
        expected = name != "params" and name in group and _hyperparameter_problem(value, group[name])
        if expected:
            raise CheckpointError(f"{where}: parameter group {number} has {name} {group[name]!r}, "
                                  f"expected {expected}")
    return dict(zip(indices, own["params"]))


def _check_parameter_state(state, parameter: torch.Tensor, where: str, label: str) -> None:
    """One parameter's saved state (``label`` names the parameter, ``where`` the checkpoint and
    key): a dict of finite numbers and dense, finite tensors of the parameter's shape (or scalars)."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where}: the state of {label} is {describe_value(state)}, expected a dict")
    for name, value in state.items():
        if value is None or isinstance(value, bool):
            continue
        if _is_number(value):
            if not math.isfinite(value):
                raise CheckpointError(f"{where}: {label} {name} is {value}, expected a finite number")
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: {label} {name} is {describe_value(value)}, expected a "
                                  f"tensor or a number")
        if value.layout != torch.strided:
            layout = str(value.layout).replace("torch.", "")
            raise CheckpointError(f"{where}: {label} {name} is a {layout} tensor, expected a dense one")
        if value.dim() and tuple(value.shape) != tuple(parameter.shape):
            raise CheckpointError(f"{where}: {label} {name} has shape {tuple(value.shape)}, the "
                                  f"parameter {tuple(parameter.shape)}")
        bad = non_finite_count(value)
        if bad:
            raise CheckpointError(
                f"{where} holds non-finite optimizer state: {label} {name} has {bad} NaN/inf "
                f"value(s) of {value.numel()} (a diverged run or a damaged file); use an earlier "
                f"checkpoint")
