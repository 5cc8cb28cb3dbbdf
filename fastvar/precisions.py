"""The precisions a study trains in: each one's weight dtype, and mixed precision's compute dtype."""
import torch

# Each precision: the dtype of the weights, and that of mixed precision's convolutions and linears.
PRECISIONS = {"float32": torch.float32, "float64": torch.float64, "bf16-mixed": torch.float32}
COMPUTE_DTYPE = {"bf16-mixed": torch.bfloat16}
