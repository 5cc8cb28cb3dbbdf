"""Augmentation throughput: fastvar's batched path against the per-sample pipeline a DataLoader runs
(uint8 image → float tensor → pad-crop → flip → normalise, one example at a time), same process, same
data. On CUDA also the Triton kernel against the torch reference.

    python benchmarks/augment.py [--batch 512] [--repeats 5]

Prints a table and ends with one JSON line holding `speedup` (batched ÷ per-sample, images per second).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastvar.augment import augment  # noqa: E402

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
    if torch.cuda.is_available():
        gpu = [t.cuda() for t in (images, indices, seeds)]
        for backend in ("torch", "triton"):
            rows.append((f"batched {backend}, CUDA", images_per_second(
                lambda: augment(*gpu, 0, backend=backend, **options), n, args.repeats, torch.cuda.synchronize)))
    base = rows[0][1]
    print(f"crop (pad 4) + flip + normalise, float32 out, {args.replicas}×{args.batch} images a call, "
          f"{torch.get_num_threads()} threads")
    print(f"{'path':<36}{'images/s':>14}{'µs/image':>10}{'speedup':>9}")
    for name, rate in rows:
        print(f"{name:<36}{rate:>14,.0f}{1e6 / rate:>10.2f}{rate / base:>9.1f}")
    print(json.dumps({"speedup": round(rows[1][1] / base, 2),
                      "results": {name: round(rate) for name, rate in rows}}))


if __name__ == "__main__":
    main()
