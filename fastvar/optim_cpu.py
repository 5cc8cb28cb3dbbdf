"""fastvar.optim's updates of one replica as C loops over its memory (optim_cpu.c), for updates by
replica on CPUs: equal bit for bit to the torch reference (the optimizers' `update`), which makes six
to nine passes over every parameter where SGD makes one and Adam two (around torch's square root).
Built on first use (fastvar.native); where it cannot be, `applies` is False and the reference serves.
"""
import ctypes

import torch

from . import native

C_TYPES = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}


def load():
    return native.load("optim_cpu", "optimizer")


def applies(tensors):
    """Whether the C updates can serve these stacked tensors: CPU, float32 or float64, contiguous."""
    return all(t.device.type == "cpu" and t.dtype in C_TYPES and t.is_contiguous() for t in tensors) \
        and load() is not None


def kernel(name, dtype):
    """optim_cpu.c's function `name` for tensors of `dtype` (float32 or float64)."""
    return getattr(load(), f"{name}_{str(dtype).removeprefix('torch.')}")


def adam(param, grad, state, c, k):
    """As BatchedAdam.update, for one replica's contiguous CPU tensors; c and k hold Python numbers."""
    real, threads = C_TYPES[param.dtype], ctypes.c_int32(torch.get_num_threads())
    exp_avg, exp_avg_sq, n = state["exp_avg"], state["exp_avg_sq"], ctypes.c_int64(param.numel())
    grad = grad.contiguous()  # held here: a temporary would be freed before the kernel reads it
    decay_mode = 0 if not k["decay"] else 2 if k["decoupled"] else 1
    kernel("adam_moments", param.dtype)(
        *map(native.pointer, (param, grad, exp_avg, exp_avg_sq)), n, ctypes.c_int32(decay_mode),
        real(c["decay"]), real(k["beta1"]), real(1 - k["beta1"]), real(k["beta2"]), real(1 - k["beta2"]), threads)
    root = exp_avg_sq.sqrt()  # torch's, as the reference's
    kernel("adam_step", param.dtype)(*map(native.pointer, (param, exp_avg, root)), n, real(c["bias2_sqrt"]),
                                     real(k["eps"]), real(c["step_size"]), threads)


def sgd(param, grad, state, c, k):
    """As BatchedSGD.update, for one replica's contiguous CPU tensors; c and k hold Python numbers."""
    real = C_TYPES[param.dtype]
    buffer = state.get("momentum_buffer", param)  # not touched without momentum
    grad = grad.contiguous()  # held here: a temporary would be freed before the kernel reads it
    momentum_mode = 0 if not k["momentum"] else 1 if k["first"] else 2
    kernel("sgd", param.dtype)(*map(native.pointer, (param, grad, buffer)), ctypes.c_int64(param.numel()),
                               ctypes.c_int32(k["decay"]), real(c["weight_decay"]), ctypes.c_int32(momentum_mode),
                               real(k["momentum"]), ctypes.c_int32(k["nesterov"]), real(c["lr"]),
                               ctypes.c_int32(torch.get_num_threads()))
