"""The first command on any GPU: what the device does, which of fastvar's forms is fastest there, and
whether the main command's study runs as it should. One call settles what a CPU cannot.

    python benchmarks/gpu_probe.py --out probe.json     # at most --minutes (8) on an H100 or H200
    python benchmarks/gpu_probe.py --dry-run            # every section at toy sizes, on a CPU

Sections, in order; each has its own share of the deadline and a row that would start past it is
recorded as not run, so a slow row never costs the rows after it their section; the JSON file is
rewritten after each row. A row that runs out of memory says so and the next one starts.
  device        name, capability, memory; torch, CUDA, driver, Triton and ptxas versions
  roofline      device-to-device copy bandwidth and the bf16 matmul peak
  update        the fused Triton update against the stacked torch reference over the seed model's live
                parameters (ms, GB/s, and whether they agree bit for bit on this device)
  step          the whole training step (vmap, bf16-mixed) at M = 16 (the default), 64 and 128, eager and
                compiled, with each convolution form: images/s, seed runs per GPU-hour, ms in forward,
                backward and update, peak memory, the top kernels by time
  conv          each convolution form per layer group at one M, forward and backward
  graphs        the step compiled, eager and replayed as a CUDA graph: ms, whether the capture happened,
                whether both train alike
  augment_eval  the Triton augmentation of a step's batch (the jordan recipe's options) and an evaluation
                of M replicas over 10,000 test images
  deterministic the step of each recipe's model under deterministic algorithms, as a study with fixed
                kernels sets them: whether it runs, and ms
  study         the main command (fixed-init, the defaults, M = 16) through the command line for a few
                hundred steps on stored random images: rows landed, steps ran as graphs; and loop against
                vmap in float64 over a few steps on this device
  recommend     the defaults this device suggests (convolution form, M, compile, graphs); the defaults
                change only by a commit after such a run
Prints a table per section and ends with one JSON line (every section's results).
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STEPS_PER_RUN = 3910  # the seed recipe: 10 epochs of 391 batches of 128
FULL = {"width": 64, "batch": 128, "step_ms": (16, 64, 128), "m": 64, "copy_mib": 1024, "matmul": 8192,
        "repeats": 10, "eval_images": 10_000, "study_images": 25_600, "study_runs": 16, "conv_shapes": None}
DRY = {"width": 4, "batch": 2, "step_ms": (2,), "m": 2, "copy_mib": 4, "matmul": 128, "repeats": 2,
       "eval_images": 8, "study_images": 16, "study_runs": 2,
       "conv_shapes": 2}  # each form on two shapes (the smallest images): the interpreted implicit GEMM is slow
SHARES = {"device": 0.01, "roofline": 0.03, "update": 0.04, "step": 0.35, "conv": 0.12, "graphs": 0.12,
          "augment_eval": 0.04, "deterministic": 0.06, "study": 0.2, "recommend": 0.03}  # of --minutes


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_probe.json"))
    parser.add_argument("--minutes", type=float, default=8.0, help="no section starts after this")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes; on a CPU when there is no GPU")
    parser.add_argument("--model", default="resnet18")
    return parser.parse_args()


import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import functional_call, vmap  # noqa: E402

ARGS = parse_args()  # before fastvar's Triton kernels are defined: a dry run without CUDA interprets them
if ARGS.dry_run and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastvar.engine import optim_triton  # noqa: E402
from fastvar.engine.live import conv_sizes  # noqa: E402
from fastvar.engine.optim import BatchedAdam, update_stacked  # noqa: E402
from fastvar.engine.replicas import Replicas, stacked_losses  # noqa: E402
from fastvar.engine.train import make_optimizer  # noqa: E402
from fastvar.engine.vmap_layers import GemmConv2d, GroupedConv2d, ImplicitConv2d  # noqa: E402
from fastvar.models import LANGUAGE_MODELS, build_model  # noqa: E402
from fastvar.recipes import RECIPES  # noqa: E402
from throughput import Timer, peak_memory_mb  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SIZES = DRY if ARGS.dry_run else FULL


def timed(fn, repeats=None):
    """The median seconds of `fn` over `repeats` calls, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats or SIZES["repeats"]):
        with Timer(DEVICE) as t:
            fn()
        times.append(t.seconds)
    return sorted(times)[len(times) // 2]


def device_section():
    import triton
    from triton.backends.nvidia.compiler import get_ptxas
    info = {"device": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu",
            "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
            "ptxas": {f"sm_{a}": ptxas_release(get_ptxas(a).path) for a in (80, 90)}, "dry_run": ARGS.dry_run}
    if DEVICE.type == "cuda":
        properties = torch.cuda.get_device_properties(DEVICE)
        info.update({"capability": f"{properties.major}.{properties.minor}", "driver": driver_version(),
                     "memory_gib": round(properties.total_memory / 2 ** 30, 1)})
    return info


def ptxas_release(path):
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
        return done.stdout.strip().splitlines()[-2].split("release ")[-1].split(",")[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def driver_version():
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
        return done.stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def roofline_section():
    n = SIZES["copy_mib"] * 2 ** 20 // 4
    src, dst = torch.randn(n, device=DEVICE), torch.empty(n, device=DEVICE)
    copy_s = timed(lambda: dst.copy_(src))
    size = SIZES["matmul"]
    a, b = (torch.randn(size, size, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    matmul_s = timed(lambda: a @ b)
    return {"copy_gb_s": 2 * n * 4 / copy_s / 1e9, "bf16_tflop_s": 2 * size ** 3 / matmul_s / 1e12}


def seed_replicas(m, **options):
    settings = dict(width=SIZES["width"], strategy="vmap", device=DEVICE, compute_dtype=torch.bfloat16)
    return Replicas(ARGS.model, list(range(m)), **{**settings, **options})


def update_section():
    """The seed model's live parameters, M replicas, Adam, one step of each form, then bits compared."""
    layout = seed_replicas(1).layout
    m, size, lowered = SIZES["m"], layout.size, layout.lowered
    g = torch.Generator(device=DEVICE).manual_seed(0)
    start = torch.randn(m, size, device=DEVICE, generator=g)
    grads = (torch.randn(m, lowered, device=DEVICE, generator=g).bfloat16(),
             torch.randn(m, size - lowered, device=DEVICE, generator=g))
    results, finals = {}, {}
    for form, update in (("triton", optim_triton.UPDATES["BatchedAdam"]), ("reference", update_stacked)):
        params = start.clone()
        low = params[:, :lowered].bfloat16()
        optimizer = BatchedAdam(params, 1e-3, lr_factors=[1.0] * 1000, spans=layout.spans(lambda n: 1.0), low=low)
        optimizer.stacked_update = update
        seconds = timed(lambda: optimizer.step(grads))
        # per entry: fp32 param, m, v read and written, the gradient read (bf16 or fp32), the bf16 copy written
        moved = m * (size * (3 * 8) + lowered * (2 + 2) + (size - lowered) * 4)
        results.update({f"{form}_ms": seconds * 1e3, f"{form}_gb_s": moved / seconds / 1e9})
        finals[form] = (params, low)
    equal = all(torch.equal(a, b) for a, b in zip(finals["triton"], finals["reference"]))
    return {**results, "speedup": results["reference_ms"] / results["triton_ms"], "bit_identical": equal,
            "live_parameters": sum(e.size for e in layout.entries.values()), "buffer_width": size, "replicas": m}


def step_parts(replicas, optimizer, x, y):
    """The step's pieces as functions: forward only, forward and backward, the update."""
    def forward():
        return stacked_losses(replicas.template, replicas.layout.views(*replicas.stacked_leaves), replicas.buffers,
                              x, y, None)[0].sum()
    grads = {}

    def forward_backward():
        grads["last"] = replicas.train_step_grads(x, y)[2]

    def update():
        optimizer.step(grads["last"])
    return forward, forward_backward, update


def batch(m):
    g = torch.Generator(device=DEVICE).manual_seed(m)
    x = torch.randn(m, SIZES["batch"], 32, 32, 3, device=DEVICE, generator=g).to(torch.bfloat16).permute(0, 1, 4, 2, 3)
    return x, torch.randint(0, 10, (m, SIZES["batch"]), device=DEVICE, generator=g)


def step_section():
    """At each M with the default convolutions (auto), eager and compiled (on CUDA: a CPU compile takes
    minutes), and at M = 16 and the conv section's M with the grouped and (on CUDA) implicit ones."""
    compiles = (None, "default") if DEVICE.type == "cuda" else (None,)
    forms = ("grouped", "implicit") if DEVICE.type == "cuda" else ("grouped",)
    items = [(m, "auto", c) for m in SIZES["step_ms"] for c in compiles]
    items += [(m, form, None) for m in sorted({SIZES["step_ms"][0], SIZES["m"]}) for form in forms]
    return run_rows(items, step_row, lambda item: {"m": item[0], "conv": item[1], "compile": item[2]})


def step_row(item):
    m, conv, compile = item
    replicas = seed_replicas(m, conv=conv, compile=compile)
    optimizer = make_optimizer(RECIPES["seed"], replicas.master, replicas.layout, lr_factors=[1.0] * 10_000,
                               low=replicas.low)
    x, y = batch(m)
    forward, forward_backward, update = step_parts(replicas, optimizer, x, y)
    fwd, fwd_bwd, upd = timed(forward), timed(forward_backward), timed(update)
    step_s = fwd_bwd + upd
    return {"m": m, "conv": conv, "compile": compile or "off", "img_s": m * SIZES["batch"] / step_s,
            "runs_per_hour": 3600 * m / (STEPS_PER_RUN * step_s),
            "forward_ms": fwd * 1e3, "backward_ms": (fwd_bwd - fwd) * 1e3, "update_ms": upd * 1e3,
            "peak_mib": peak_memory_mb(DEVICE), "top_kernels": top_kernels(lambda: (forward_backward(), update()))}


def run_rows(items, row_of, label_of):
    """One row per item, each guarded: past the section's deadline it is not run, out of memory or
    failing it says so, and the next row starts; the report is saved after each."""
    rows = []
    for item in items:
        label = label_of(item)
        if time.monotonic() > SECTION_END[0]:
            rows.append({**label, "skipped": "past the section's deadline"})
            continue
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(DEVICE)
        try:
            rows.append(row_of(item))
        except torch.OutOfMemoryError:
            rows.append({**label, "failed": "out of memory"})
        except Exception as e:  # a form this device or shape does not take: a finding, not the end
            rows.append({**label, "failed": f"{type(e).__name__}: {first_line(e)}"})
        save_partial(rows)
    return rows


def first_line(error):
    text = str(error).strip()
    return text.splitlines()[0][:120] if text else ""


def top_kernels(fn, count=8):
    """The kernels (CPU ops on a CPU) that took the most time in two calls of fn, by self time."""
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if DEVICE.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as profile:
        fn()
        fn()
        Timer(DEVICE).sync()
    key = "self_device_time_total" if DEVICE.type == "cuda" else "self_cpu_time_total"
    events = sorted(profile.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:count]
    return [{"name": e.key[:80], "ms": getattr(e, key) / 2e3, "calls": e.count // 2} for e in events]


def layer_groups():
    """The model's convolutions grouped by shape: (count, in, out, k, stride, padding, H) of its input."""
    model = build_model(ARGS.model, init_seed=0, width=SIZES["width"]).to("meta")
    groups = {}
    for name, ((h, _), _) in conv_sizes(model, (3, 32, 32)).items():
        conv = model.get_submodule(name)
        key = (conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0], h)
        groups[key] = groups.get(key, 0) + 1
    return groups


def conv_form(form, c_in, c_out, k, s, p, m):
    """A function of (input, weights) → output for one convolution form over M replicas."""
    if form == "shared":
        return lambda x, w: F.conv2d(x.flatten(0, 1), w[0], stride=s, padding=p)
    layer = torch.nn.Conv2d(c_in, c_out, k, stride=s, padding=p, bias=False, device="meta")
    layer.__class__ = {"gemm": GemmConv2d, "grouped": GroupedConv2d, "implicit": ImplicitConv2d,
                       "vmap": torch.nn.Conv2d}[form]

    def run(x, w):
        return vmap(lambda wi, xi: functional_call(layer, {"weight": wi}, (xi,)))(w, x)
    return run


FORMS = ("gemm", "grouped", "implicit", "vmap", "shared")


def conv_section():
    m, rows = SIZES["m"], []
    shapes = list(layer_groups().items())
    convs = sum(count for _, count in shapes)
    if SIZES["conv_shapes"]:  # a dry run: the smallest images' shapes
        shapes = sorted(shapes, key=lambda shape: shape[0][5])[:SIZES["conv_shapes"]]
    for (c_in, c_out, k, s, p, h), count in shapes:
        if time.monotonic() > SECTION_END[0]:
            rows.append({"layer": f"{k}x{k}/{s} {c_in}->{c_out} @{h}x{h}", "count": count,
                         "skipped": "past the section's deadline"})
            continue
        x = torch.randn(m, SIZES["batch"], h, h, c_in, device=DEVICE, dtype=torch.bfloat16).permute(0, 1, 4, 2, 3)
        x.requires_grad_()
        row = {"layer": f"{k}x{k}/{s} {c_in}->{c_out} @{h}x{h}", "count": count}
        for form in FORMS:
            order = GemmConv2d.WEIGHT_MEMORY_ORDER if form in ("gemm", "implicit") else (0, 1, 2, 3)
            memory = torch.randn(m, *(((c_out, c_in, k, k)[d]) for d in order), device=DEVICE, dtype=torch.bfloat16)
            w = memory.permute(0, *(order.index(d) + 1 for d in range(4))).requires_grad_()
            run = conv_form(form, c_in, c_out, k, s, p, m)

            def forward_backward():
                out = run(x, w)
                torch.autograd.grad(out, (x, w), torch.ones_like(out))
            try:
                row[f"{form}_ms"] = timed(forward_backward) * 1e3
            except RuntimeError as e:  # a form this device or shape does not take
                row[f"{form}_ms"] = f"failed: {str(e).splitlines()[0][:60]}"
        timed_forms = {f: row[f"{f}_ms"] for f in FORMS[:-1] if isinstance(row[f"{f}_ms"], float)}  # not shared
        row["fastest"] = min(timed_forms, key=timed_forms.get) if timed_forms else None
        rows.append(row)
        save_partial(rows)
    totals = {f"{f}_total_ms": sum(r["count"] * r[f"{f}_ms"] for r in rows) for f in FORMS
              if all(isinstance(r.get(f"{f}_ms"), float) for r in rows)}
    return rows + [{**totals, "convs": convs, "convs_timed": sum(r["count"] for r in rows)}]


def graphs_section():
    """The compiled step trained twice from the same start for a few steps, eagerly and as a CUDA graph."""
    from fastvar.engine.graphs import GraphedStep
    m, steps, results, trained = SIZES["step_ms"][0], 8, {}, {}
    x, y = batch(m)
    for form in ("eager", "graph") if DEVICE.type == "cuda" else ("eager",):
        replicas = seed_replicas(m, compile="default" if DEVICE.type == "cuda" else None)  # a CPU compile: minutes
        optimizer = make_optimizer(RECIPES["seed"], replicas.master, replicas.layout, lr_factors=[1.0] * 10_000,
                                   low=replicas.low)

        def step():
            losses, _, grads = replicas.train_step_grads(x, y)
            optimizer.step(grads)
            return (losses,)
        run = GraphedStep(step) if form == "graph" else step
        started = time.perf_counter()
        losses = [run()[0].clone() for _ in range(steps)]
        warm_s = time.perf_counter() - started
        trained[form] = (torch.stack(losses), replicas.master.clone())
        results.update({f"{form}_ms": timed(run) * 1e3, f"{form}_first_{steps}_steps_s": warm_s})
        if form == "graph":
            results["captured"] = run.ran_as_graph  # False: the capture failed and the step ran eagerly
    if "graph" in trained:
        results["bit_identical"] = all(torch.equal(a, b) for a, b in zip(trained["graph"], trained["eager"]))
        results["speedup"] = results["eager_ms"] / results["graph_ms"]
    else:
        results["graph_ms"] = "needs CUDA"
    return results


def augment_eval_section():
    """The augmentation of one step's batch (jordan's flip, translate and cutout) and one evaluation."""
    from fastvar.augment import augment
    from fastvar.data import Dataset
    from fastvar.engine.train import evaluate
    m, n = SIZES["m"], SIZES["eval_images"]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (max(n, m * SIZES["batch"]), 32, 32, 3), dtype=torch.uint8, generator=g).to(DEVICE)
    labels = (torch.arange(len(images)) % 10).to(DEVICE)
    indices = torch.randint(0, len(images), (m, SIZES["batch"]), generator=g).to(DEVICE)
    seeds, recipe = torch.arange(m, device=DEVICE), RECIPES["jordan"]
    augment_s = timed(lambda: augment(images, indices, seeds, 1, **dataclasses.asdict(recipe.augment),
                                      mean=recipe.mean, std=recipe.std, dtype=torch.bfloat16))
    replicas = seed_replicas(m)
    data = Dataset(images[:n], labels[:n], images[:n], labels[:n])
    evaluate_s = timed(lambda: evaluate(replicas, data, RECIPES["seed"]), repeats=1)
    return {"m": m, "augment_ms": augment_s * 1e3, "augment_img_s": m * SIZES["batch"] / augment_s,
            "evaluate_s": evaluate_s, "test_images": n}


def deterministic_section():
    """Each recipe's model, one step under deterministic algorithms as a study with fixed kernels sets
    them (fastvar.sources.kernel_mode; on a CPU it changes nothing)."""
    from fastvar.sources import kernel_mode

    def row(name):
        recipe = RECIPES[name]
        replicas = Replicas(recipe.model, list(range(SIZES["step_ms"][0])), width=SIZES["width"], strategy="vmap",
                            device=DEVICE, compute_dtype=torch.bfloat16)
        optimizer = make_optimizer(recipe, replicas.master, replicas.layout, lr_factors=[1.0] * 10_000,
                                   low=replicas.low)
        x, y = batch(replicas.size)
        with kernel_mode(False, DEVICE):
            step_s = timed(lambda: optimizer.step(replicas.train_step_grads(x, y)[2]))
            replicas.logits(x[0])
        return {"recipe": name, "model": recipe.model, "runs": True, "step_ms": step_s * 1e3}
    images = [name for name in RECIPES if RECIPES[name].model not in LANGUAGE_MODELS]
    return run_rows(images, row, lambda name: {"recipe": name, "runs": False})


def study_section():
    """The main command's study through the command line, its defaults, on stored random images (a few
    hundred steps); then loop against vmap in float64 over a few steps on this device."""
    import tempfile
    import numpy as np
    from fastvar import cli
    from fastvar.store import Store
    rng = np.random.default_rng(0)
    n, runs = SIZES["study_images"], SIZES["study_runs"]
    with tempfile.TemporaryDirectory() as folder:
        arrays = {"x_train": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), "y_train": np.arange(n) % 10,
                  "x_test": rng.integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8), "y_test": np.arange(1000) % 10}
        np.savez(f"{folder}/data.npz", **arrays)
        command = ["--experiment", "fixed-init", "--runs", str(runs), "--batch-models", str(min(16, runs)),
                   "--epochs", "1", "--data", f"{folder}/data.npz", "--out", f"{folder}/out"]
        if ARGS.dry_run:
            command += ["--width", str(SIZES["width"])]
        started = time.perf_counter()
        code = cli.main(command)
        seconds = time.perf_counter() - started
        rows = Store(f"{folder}/out").runs() if code == 0 else []
    result = {"command": "fastvar " + " ".join(command[:6]), "exit": code, "rows": len(rows), "seconds": seconds,
              "steps": -(-n // 128), "as_graphs": sum(r.get("cuda_graph") == 1 for r in rows),
              "rows_landed": len(rows) == runs,
              "graphed": DEVICE.type != "cuda" or all(r.get("cuda_graph") == 1 for r in rows)}
    return {**result, **loop_against_vmap()}


def loop_against_vmap():
    """Three Adam steps of two replicas in float64, each strategy: the largest difference of any weight."""
    from fastvar.data import Dataset
    from fastvar.engine.train import fit
    from fastvar.sources import run_seeds
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (24, 32, 32, 3), dtype=torch.uint8, generator=g).to(DEVICE)
    y = (torch.arange(24) % 10).to(DEVICE)
    recipe = RECIPES["seed"].replace(epochs=1, batch_size=8)
    seeds = [run_seeds("all-random", i) for i in range(2)]
    trained = {}
    for strategy in ("loop", "vmap"):
        replicas = Replicas("resnet18", [s.init_seed for s in seeds], width=4, strategy=strategy, dtype=torch.float64,
                            device=DEVICE, conv="native" if strategy == "loop" else "auto")
        fit(replicas, Dataset(x, y, x, y), recipe, seeds)
        trained[strategy] = [replicas.state_dict(r) for r in range(len(seeds))]
    difference = max((a[k].double() - b[k].double()).abs().max().item()
                     for a, b in zip(trained["loop"], trained["vmap"]) for k in a)
    return {"loop_vmap_float64_max_diff": difference, "loop_vmap_agree": difference < 1e-10}


def recommend_section():
    """The defaults this device's rows suggest: the fastest step row's convolution form, M and compile;
    graphs where they captured, trained alike and were faster."""
    rows = [r for r in REPORT.get("step", []) if isinstance(r, dict) and "runs_per_hour" in r]
    if not rows:
        return {"recommendation": "none: no step row ran"}
    best = max(rows, key=lambda r: r["runs_per_hour"])
    graphs = REPORT.get("graphs") if isinstance(REPORT.get("graphs"), dict) else {}
    use_graphs = bool(graphs.get("captured") and graphs.get("bit_identical") and graphs.get("speedup", 0) > 1.05)
    return {"conv": best["conv"], "m": best["m"], "compile": best["compile"], "cuda_graphs": use_graphs,
            "runs_per_hour": best["runs_per_hour"], "goal_3000_met": best["runs_per_hour"] >= 3000}


SECTIONS = {"device": device_section, "roofline": roofline_section, "update": update_section, "step": step_section,
            "conv": conv_section, "graphs": graphs_section, "augment_eval": augment_eval_section,
            "deterministic": deterministic_section, "study": study_section, "recommend": recommend_section}
REPORT, SECTION_END, CURRENT = {}, [float("inf")], [None]


def save_partial(rows):
    """The rows of the running section so far, in the file: a kill loses at most the row in flight."""
    ARGS.out.write_text(json.dumps({**REPORT, CURRENT[0]: rows}, indent=1, default=str))


def main():
    start, budget = time.monotonic(), ARGS.minutes * 60
    used = 0.0
    for name, section in SECTIONS.items():
        used += SHARES[name]
        SECTION_END[0], CURRENT[0] = start + used * budget, name  # unused time passes on to later sections
        if time.monotonic() > SECTION_END[0]:
            REPORT[name] = "not started: past the deadline"
            continue
        started = time.monotonic()
        try:
            REPORT[name] = section()
        except Exception as e:  # one section's failure is a finding; the others still run
            REPORT[name] = f"failed: {type(e).__name__}: {first_line(e)}"
        print_section(name, REPORT[name], time.monotonic() - started)
        ARGS.out.write_text(json.dumps(REPORT, indent=1, default=str))
    print(json.dumps(REPORT, default=str))


def print_section(name, result, seconds):
    print(f"== {name} ({seconds:.1f} s)")
    rows = result if isinstance(result, list) else [result]
    for row in rows:
        print("  " + ("  ".join(f"{k}={fmt(v)}" for k, v in row.items() if k != "top_kernels")
                      if isinstance(row, dict) else str(row)))
        for kernel in row.get("top_kernels", []) if isinstance(row, dict) else []:
            print(f"      {kernel['ms']:9.3f} ms  x{kernel['calls']:<4} {kernel['name']}")


def fmt(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
