"""Training images per second, side by side in one process, on the same data:

  baseline      the seed study's loop: nn.Module + torch.optim.Adam, a DataLoader over a Dataset that
                converts each sample as ToTensor + Normalize do, and a .item() per batch (float32);
  loop          fastvar's loop strategy (resident uint8 data, batched optimizer), M replicas;
  vmap          fastvar's vmap strategy, M replicas;
  loop-dense    (and vmap-dense) every parameter in the step and the optimizer, dead taps included, as
                before live parameters (fastvar.engine.live): the same results, bit for bit;
  +compile      the same under torch.compile (its compile time reported), with --compile.

    python benchmarks/throughput.py --width 64 --batch-models 1,4 --seconds 20
    python benchmarks/throughput.py --device cuda --batch-models 1,16,64 --compile default

Prints a table and ends with one JSON line (baseline_img_s, best_img_s, best_strategy, speedup,
flops_fraction, runs_per_hour, ...). runs_per_hour projects the recipe's epochs of 50,000 images.
flops_fraction is the loop strategy's training FLOP/s (counted with torch.utils.flop_counter) over the
matmul peak measured in the same process: float32 on the CPU, bfloat16 on CUDA. The peak is measured
before the first row and after every row, and the highest of these serves every row, so that a
machine that slows down for a while (a shared one does) cannot inflate a ratio. The model's count
includes the products with convolutions' zero padding, which fastvar's unrolled convolutions leave
out; the `executed` column (executed_fraction) counts the matrix products each strategy's step runs.
"""
import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.flop_counter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastvar import native  # noqa: E402
from fastvar.data import DataError, Dataset, load_dataset  # noqa: E402
from fastvar.models import MODELS, build_model  # noqa: E402
from fastvar.engine.replicas import CONVS, Replicas  # noqa: E402
from fastvar.sources import run_seeds  # noqa: E402
from fastvar.precisions import COMPUTE_DTYPE, PRECISIONS  # noqa: E402
from fastvar.recipes import RECIPES  # noqa: E402
from fastvar.engine.train import fit  # noqa: E402

TRAIN_IMAGES = 50_000


class PerSampleCIFAR(torch.utils.data.Dataset):
    """What the original study's DataLoader did for each image: ToTensor, then Normalize(0.5, 0.5)."""

    def __init__(self, x, y):
        self.x, self.y = x.numpy(), y.numpy()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        image = torch.from_numpy(self.x[i]).permute(2, 0, 1).float().div(255)
        return (image - 0.5) / 0.5, int(self.y[i])


class Timer:
    """Wall time of the region, the device's queue drained at both ends."""

    def __init__(self, device):
        self.device = device

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        self.sync()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.seconds = time.perf_counter() - self.started


def baseline(data, recipe, width, device, warmup, seconds):
    """Images per second and seconds of warm-up of the original loop (batches beyond the data wrap)."""
    model = build_model(recipe.model, init_seed=0, width=width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(PerSampleCIFAR(data.x_train.cpu(), data.y_train.cpu()),
                                         batch_size=recipe.batch_size, shuffle=True, drop_last=True)

    def steps(n):
        done = 0
        while True:
            for x, y in loader:
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x.to(device)), y.to(device))
                loss.backward()
                optimizer.step()
                loss.item()
                done += 1
                if done == n:
                    return
    return measure(steps, recipe.batch_size, device, warmup, seconds)


def fastvar(data, recipe, width, device, strategy, m, precision, compile, conv, warmup, seconds):
    """Images per second and seconds of warm-up (compile included) of fastvar's own loop (fit), and
    the FLOPs its step executes per image; strategy "loop-dense" or "vmap-dense": every parameter."""
    seeds = [run_seeds("all-random", i) for i in range(m)]
    strategy, _, dense = strategy.partition("-")
    options = dict(width=width, strategy=strategy, dtype=PRECISIONS[precision], live_only=dense != "dense",
                   compute_dtype=COMPUTE_DTYPE.get(precision), device=device, conv=conv)
    replicas = Replicas(recipe.model, [s.init_seed for s in seeds], compile=compile, **options)
    batch = recipe.batch_size

    def steps(n):  # whole batches only (a partial one would recompile), epochs over the data as needed
        per_epoch = min(n, len(data.y_train) // batch)
        subset = Dataset(*(t[:per_epoch * batch] for t in (data.x_train, data.y_train)), data.x_test, data.y_test)
        epochs = -(-n // per_epoch)
        fit(replicas, subset, recipe.replace(epochs=epochs), seeds)
        return epochs * per_epoch
    executed = executed_flops_per_image(Replicas(recipe.model, [0], **options), batch)
    return dict(measure(steps, batch * m, device, warmup, seconds), executed_flops_per_image=executed)


def executed_flops_per_image(replicas, batch):
    """The FLOPs one eager replica's step runs per image, counted on its own matrix products: fewer
    than the model's count where unrolled convolutions leave out the products with the padding."""
    x = torch.randn(1, batch, 3, 32, 32, device=replicas.params["fc.weight"].device, dtype=replicas.input_dtype())
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        replicas.train_step_grads(x, torch.zeros(1, batch, dtype=torch.int64, device=x.device))
    return counter.get_total_flops() / batch


def measure(steps, images_per_step, device, warmup, seconds):
    """Run `warmup` steps, time 2 to learn the pace, then time enough steps to fill `seconds`."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with Timer(device) as first:
        steps(warmup)
    with Timer(device) as pace:
        steps(2)
    n = max(2, round(seconds * 2 / pace.seconds))
    with Timer(device) as timed:
        n = steps(n) or n
    return {"img_s": n * images_per_step / timed.seconds, "warmup_s": first.seconds, "steps": n}


def peak_memory_mb(device):
    """Peak memory since the last reset in CUDA's allocator; on the CPU the process's peak RSS so far,
    data and interpreter included (per replica, an upper bound)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_flops_per_image(recipe, width):
    """FLOPs of one training step (forward and backward) of the recipe's model, per image."""
    model = build_model(recipe.model, init_seed=0, width=width)
    batch = recipe.batch_size
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def best_rate(device, flops, fn, repeats):
    """FLOP/s of `fn` (which does `flops`), best of `repeats` after one untimed call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        with Timer(device) as t:
            fn()
        best = min(best, t.seconds)
    return flops / best


def peak_flops(device, repeats=5):
    """The fastest FLOP/s this process reaches: on CUDA a bfloat16 8192² matrix product; on the CPU
    the best float32 rate among MKL's products of several shapes and a oneDNN convolution (on an AMD
    EPYC, MKL's 2048² product ran slower than oneDNN's convolutions, so a peak of MKL's alone read
    below what the training step executed)."""
    if device.type == "cuda":
        a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
        return best_rate(device, 2 * 8192 ** 3, lambda: a @ b, repeats)
    rates = []
    for m, k, n in ((2048, 2048, 2048), (4096, 576, 4096), (8192, 256, 1024)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        rates.append(best_rate(device, 2 * m * k * n, lambda a=a, b=b: a @ b, repeats))
    x, w = torch.randn(128, 64, 32, 32), torch.randn(64, 64, 3, 3)
    rates.append(best_rate(device, 2 * 128 * 64 * 32 * 32 * 64 * 9, lambda: F.conv2d(x, w, padding=1), repeats))
    return max(rates)


def theoretical_cpu_peak():
    """float32 FLOP/s from the processor's vector width (AVX-512: 16 lanes, AVX2: 8), two fused
    multiply-adds a cycle per core, its nominal clock and torch's threads; None where unreadable."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    mhz = [float(line.split(":", 1)[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
    lanes = 16 if "avx512f" in flags else 8 if "fma" in flags else None
    if not (lanes and mhz):
        return None
    return lanes * 2 * 2 * max(mhz) * 1e6 * torch.get_num_threads()


def benchmark_data(data_dir, device):
    try:
        data, source = load_dataset("cifar10", data_dir, train_subset=10_000, test_subset=100), "CIFAR-10"
    except DataError:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (10_000, 32, 32, 3), dtype=torch.uint8, generator=g)
        data, source = Dataset(x, torch.arange(10_000) % 10, x[:100], torch.arange(100) % 10), "random images"
    return data.to(device), source


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--recipe", choices=RECIPES, default="seed")
    parser.add_argument("--width", type=int, help="default: the model's")
    parser.add_argument("--batch-models", default="1,4")
    parser.add_argument("--strategies", default="loop,vmap", help="of loop, vmap, loop-dense, vmap-dense")
    parser.add_argument("--precision", choices=PRECISIONS, help="default: bf16-mixed on CUDA, float32 on the CPU")
    parser.add_argument("--compile", help="also time each strategy under torch.compile in this mode (default, "
                                          "reduce-overhead, ...); default: on CUDA only, mode default")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--conv", choices=CONVS, default="auto",
                        help="fastvar's convolutions (as run.py's --conv)")
    parser.add_argument("--seconds", type=float, default=10, help="timed seconds per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile happens here)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the original loop (slow on a GPU)")
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args()
    args.device = torch.device(args.device)
    args.precision = args.precision or ("bf16-mixed" if args.device.type == "cuda" else "float32")
    args.compile = None if args.no_compile else args.compile or ("default" if args.device.type == "cuda" else None)
    return args


def main():
    args = parse_args()
    native.retain_freed_memory()  # for every loop measured, as run.py does
    recipe = RECIPES[args.recipe]
    width = args.width or MODELS[recipe.model].width
    data, source = benchmark_data(args.data_dir, args.device)
    table = Table(args, recipe, width, source)
    if not args.no_baseline:
        table.add("baseline", 1, baseline(data, recipe, width, args.device, args.warmup, args.seconds))
    strategies = args.strategies.split(",")
    for strategy, compile in [(s, None) for s in strategies] + [(s, args.compile) for s in strategies if args.compile]:
        for m in map(int, args.batch_models.split(",")):
            row = fastvar(data, recipe, width, args.device, strategy, m, args.precision, compile, args.conv,
                          args.warmup, args.seconds)
            table.add(strategy + ("+compile" if compile else ""), m, row)
    table.summary()


class Table:
    """Rows printed as they are measured (a later variant may fail), then one JSON line."""

    def __init__(self, args, recipe, width, source):
        self.args, self.recipe, self.width, self.rows = args, recipe, width, []
        self.flops, self.peaks = train_flops_per_image(recipe, width), [peak_flops(args.device)]
        self.theoretical = theoretical_cpu_peak() if args.device.type == "cpu" else None
        self.device = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" \
            else f"CPU, {torch.get_num_threads()} threads"
        print(f"{args.recipe} recipe ({recipe.model}, width {width}, batch {recipe.batch_size}), {source}, "
              f"{self.device}; fastvar in {args.precision} with {args.conv} convolutions, baseline in float32; "
              f"{self.flops / 1e9:.3f} GFLOP per training image; 'of peak' against the highest "
              f"{'float32' if args.device.type == 'cpu' else 'bf16'} peak measured so far (the fastest product "
              f"or convolution this process runs)")
        print(f"{'strategy':<16}{'M':>4}{'img/s':>11}{'runs/h':>9}{'x base':>8}{'of peak':>9}{'executed':>10}"
              f"{'MB/replica':>12}{'warm-up s':>11}", flush=True)

    def add(self, strategy, m, row):
        """`row` as measure gives it; fastvar's rows add the FLOPs their step executes (the baseline
        executes the model's count)."""
        row = dict(strategy=strategy, batch_models=m, **row, peak_mb_per_replica=peak_memory_mb(self.args.device) / m,
                   runs_per_hour=row["img_s"] * 3600 / (self.recipe.epochs * TRAIN_IMAGES))
        row.setdefault("executed_flops_per_image", self.flops)
        self.rows.append(row)
        self.peaks.append(peak_flops(self.args.device))
        self.set_fractions()
        print(f"{strategy:<16}{m:>4}{row['img_s']:>11.1f}{row['runs_per_hour']:>9.2f}{row['img_s'] / self.base():>8.2f}"
              f"{row['flops_fraction']:>9.3f}{row['executed_fraction']:>10.3f}{row['peak_mb_per_replica']:>12.0f}"
              f"{row['warmup_s']:>11.1f}", flush=True)

    def set_fractions(self):
        """Every row's FLOP/s over the highest peak measured so far."""
        for row in self.rows:
            row["flops_fraction"] = row["img_s"] * self.flops / max(self.peaks)
            row["executed_fraction"] = row["img_s"] * row["executed_flops_per_image"] / max(self.peaks)

    def base(self):
        return self.rows[0]["img_s"] if self.rows[0]["strategy"] == "baseline" else float("nan")

    def summary(self):
        fast = [r for r in self.rows if r["strategy"] != "baseline"]
        best = max(fast, key=lambda r: r["img_s"])
        loop = max((r for r in fast if r["strategy"] == "loop"), key=lambda r: r["img_s"], default=best)
        theoretical = f"; theoretical {self.theoretical / 1e12:.3f} at the nominal clock" if self.theoretical else ""
        print(f"peak {max(self.peaks) / 1e12:.3f} TFLOP/s, the highest of {len(self.peaks)} measurements "
              f"(lowest {min(self.peaks) / 1e12:.3f}){theoretical}; the JSON's fractions are against the highest")
        print(json.dumps({"baseline_img_s": round(self.base(), 1), "best_img_s": round(best["img_s"], 1),
                          "best_strategy": f"{best['strategy']} M={best['batch_models']}",
                          "speedup": round(best["img_s"] / self.base(), 3),
                          "flops_fraction": round(loop["flops_fraction"], 3),
                          "best_flops_fraction": round(best["flops_fraction"], 3),
                          "runs_per_hour": round(best["runs_per_hour"], 2), "gflop_per_image": round(self.flops / 1e9, 4),
                          "peak_tflop_s": round(max(self.peaks) / 1e12, 3),
                          "peak_tflop_s_lowest": round(min(self.peaks) / 1e12, 3), "device": self.device,
                          "theoretical_peak_tflop_s": self.theoretical and round(self.theoretical / 1e12, 3),
                          "precision": self.args.precision, "conv": self.args.conv, "recipe": self.args.recipe, "width": self.width,
                          "results": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
                                      for r in self.rows]}))


if __name__ == "__main__":
    main()
