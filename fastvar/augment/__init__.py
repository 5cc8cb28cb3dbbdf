"""From the device-resident dataset to the training batch of all replicas: the hash draws, the
dispatcher and the torch reference (`reference`), the fused C loop (`cpu`, `cpu.c`) and the Triton
kernel (`triton_kernel`), equal bit for bit."""
from .reference import augment, batch_inputs, normalized

__all__ = ["augment", "batch_inputs", "normalized"]
