"""Augmentation throughput: fastvar's batched path against the per-sample pipeline a DataLoader runs
(uint8 image → float tensor → pad-crop → flip → normalise, one example at a time), same process, same
data. On CUDA also the Triton kernel against the torch reference, in float32 and bfloat16, with the bytes
moved per second against a device-to-device copy's.

    python benchmarks/augment.py [--batch 512] [--repeats 5]

Prints a table and ends with one JSON line holding `speedup`: the CPU path `augment` takes by default
(the fused C loop where a compiler built it, else the torch reference) ÷ per-sample, images per second.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastvar.augment import cpu as augment_cpu  # noqa: E402
from fastvar.augment.reference import augment  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def per_sample(images, indices, generator):
    """What torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip + Normalize do per image."""
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    batch = []
    for i in indices.tolist():
        image = torch.from_numpy(images[i]).permute(2, 0, 1).float().div(255)
        padded = F.pad(image, (4, 4, 4, 4))
        top, left = torch.randint(0, 9, (2,), generator=generator).tolist()
        crop = padded[:, top:top + 32, left:left + 32]
        if torch.rand(1, generator=generator).item() < 0.5:
            crop = crop.flip(-1)
        batch.append((crop - mean) / std)
    return torch.stack(batch)


def images_per_second(fn, n_images, repeats, sync):
    fn()  # warm-up (and Triton's compile)
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return n_images * repeats / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50_000, 32, 32, 3), dtype=torch.uint8, generator=g)
    indices = torch.randint(0, 50_000, (args.replicas, args.batch), generator=g)
    seeds = torch.arange(args.replicas)
    n = args.replicas * args.batch
    options = dict(flip=True, pad=4, mean=MEAN, std=STD)
    rows = [("per-sample (DataLoader style), CPU",
             images_per_second(lambda: per_sample(images.numpy(), indices.flatten(), g), n, args.repeats, lambda: None)),
            ("batched torch, CPU",
             images_per_second(lambda: augment(images, indices, seeds, 0, backend="torch", **options),
                               n, args.repeats, lambda: None))]
    if augment_cpu.load():
        rows.append(("fused C loop, CPU", images_per_second(
            lambda: augment(images, indices, seeds, 0, backend="c", **options), n, args.repeats, lambda: None)))
    cpu_path = rows[-1]  # what backend="auto" uses on a CPU
    bandwidth = {}
    if torch.cuda.is_available():
        gpu = [t.cuda() for t in (images, indices, seeds)]
        bandwidth["copy"] = copy_bandwidth()
        for dtype in (torch.float32, torch.bfloat16):
            for backend in ("torch", "triton"):
                name = f"batched {backend}, CUDA, {str(dtype)[6:]}"
                rows.append((name, images_per_second(lambda: augment(*gpu, 0, backend=backend, dtype=dtype, **options),
                                                     n, args.repeats, torch.cuda.synchronize)))
                bandwidth[name] = rows[-1][1] * 3072 * (1 + dtype.itemsize)  # uint8 read, output written
    base = rows[0][1]
    print(f"crop (pad 4) + flip + normalise, float32 out unless named, {args.replicas}×{args.batch} images a call, "
          f"{torch.get_num_threads()} CPU threads")
    print(f"{'path':<40}{'images/s':>14}{'µs/image':>10}{'speedup':>9}{'GB/s':>8}{'of copy':>9}")
    for name, rate in rows:
        moved = bandwidth.get(name)
        extra = f"{moved / 1e9:>8.0f}{moved / bandwidth['copy']:>9.2f}" if moved else ""
        print(f"{name:<40}{rate:>14,.0f}{1e6 / rate:>10.3f}{rate / base:>9.1f}{extra}")
    print(json.dumps({"speedup": round(cpu_path[1] / base, 2), "cpu_path": cpu_path[0], "copy_gb_s": round(bandwidth.get("copy", 0) / 1e9),
                      "results": {name: round(rate) for name, rate in rows}}))


def copy_bandwidth(n_bytes=2 ** 30):
    """Bytes read plus bytes written per second by a large device-to-device copy (the ceiling)."""
    a = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    torch.cuda.synchronize()
    return 2 * n_bytes * 10 / (time.perf_counter() - started)


if __name__ == "__main__":
    main()
