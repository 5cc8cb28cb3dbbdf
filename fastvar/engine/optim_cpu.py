"""fastvar.engine.optim's updates of one replica as C loops over its memory (optim_cpu.c), for updates by
replica on CPUs: equal bit for bit to the torch reference (the optimizers' `update`), which makes six
to nine passes over every parameter where these make one. Elementwise, so any memory layout serves
that the parameter, its gradient and its state share. Built on first use (fastvar.native); where it
cannot be, `applies` is False and the reference serves.
"""
import ctypes
from pathlib import Path

import torch

from .. import native

C_TYPES = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}


def load():
    return native.load(Path(__file__).with_name("optim_cpu.c"), "optimizer")


def applies(tensors, dtypes):
    """Whether the C updates can serve these stacked tensors: on the CPU, of `dtypes`, and each
    replica's slice one dense block of memory."""
    return all(t.device.type == "cpu" and t.dtype in dtypes and dense(t[0]) for t in tensors) \
        and load() is not None


def dense(tensor):
    """Whether the tensor's elements fill its span of memory exactly, in whatever order."""
    span = 1
    for stride, size in sorted((st, sz) for st, sz in zip(tensor.stride(), tensor.shape) if sz > 1):
        if stride != span:
            return False
        span *= size
    return True


def like(grad, param):
    """grad with param's memory layout and dtype (a low-precision gradient upcast, exactly)."""
    same = grad.stride() == param.stride() and grad.dtype == param.dtype
    return grad if same else torch.empty_like(param).copy_(grad)


def kernel(name, dtype):
    """optim_cpu.c's function `name` for tensors of `dtype` (float32 or float64)."""
    return getattr(load(), f"{name}_{str(dtype).removeprefix('torch.')}")


def adam(param, grad, state, coefficients, constants):
    """As BatchedAdam.update, for one replica's float32 CPU tensors of one layout; `coefficients` and
    `constants` hold Python numbers."""
    c, k = coefficients, constants  # short names in the kernel's long argument list
    real, exp_avg, exp_avg_sq = ctypes.c_float, state["exp_avg"], state["exp_avg_sq"]
    grad = like(grad, param)  # held here: a temporary would be freed before the kernel reads it
    decay_mode = 0 if not k["decay"] else 2 if k["decoupled"] else 1
    kernel("adam", param.dtype)(
        *map(native.pointer, (param, grad, exp_avg, exp_avg_sq)), ctypes.c_int64(param.numel()),
        ctypes.c_int32(decay_mode), real(c["decay"]), real(k["beta1"]), real(1 - k["beta1"]), real(k["beta2"]),
        real(1 - k["beta2"]), real(c["bias2_sqrt"]), real(k["eps"]), real(c["step_size"]),
        ctypes.c_int32(torch.get_num_threads()))


def sgd(param, grad, state, coefficients, constants):
    """As BatchedSGD.update, for one replica's CPU tensors of one layout; `coefficients` and
    `constants` hold Python numbers."""
    c, k = coefficients, constants  # short names in the kernel's long argument list
    real = C_TYPES[param.dtype]
    buffer = state.get("momentum_buffer", param)  # not touched without momentum
    grad = like(grad, param)  # held here: a temporary would be freed before the kernel reads it
    momentum_mode = 0 if not k["momentum"] else 1 if k["first"] else 2
    kernel("sgd", param.dtype)(*map(native.pointer, (param, grad, buffer)), ctypes.c_int64(param.numel()),
                               ctypes.c_int32(k["decay"]), real(c["weight_decay"]), ctypes.c_int32(momentum_mode),
                               real(k["momentum"]), ctypes.c_int32(k["nesterov"]), real(c["lr"]),
                               ctypes.c_int32(torch.get_num_threads()))
