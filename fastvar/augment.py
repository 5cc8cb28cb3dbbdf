"""From the device-resident uint8 dataset to a training batch for all replicas.

Normalisation goes through a per-channel table of 256 values computed once by torch in the output
dtype, so a pixel becomes exactly what ToTensor + Normalize would give: (v / 255 - mean) / std.
"""
import torch


def normalize_table(mean, std, dtype=torch.float32, device="cpu"):
    """3×256 table: entry [c, v] is (v / 255 - mean[c]) / std[c], rounded once to `dtype`."""
    values = torch.arange(256, dtype=torch.float32) / 255  # as ToTensor computes it, in float32
    table = (values[None, :] - torch.tensor(mean)[:, None]) / torch.tensor(std)[:, None]
    return table.to(dtype=dtype, device=device)


def gather_batch(images, indices, table):
    """images N×32×32×3 uint8, indices (...)×B → (...)×B×3×32×32, channels-last in memory.

    The gather keeps the NHWC layout, so each replica's slice is channels-last without a copy.
    """
    pixels = images[indices].long()  # (...)×B×32×32×3
    channel = torch.arange(3, device=images.device)
    normalized = table[channel, pixels]
    return normalized.movedim(-1, -3)
