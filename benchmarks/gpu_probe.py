"""The first command on any GPU: what the device does, and which of fastvar's forms is fastest there.

    python benchmarks/gpu_probe.py --out probe.json     # at most --minutes (8) on an H100 or H200
    python benchmarks/gpu_probe.py --dry-run            # every section at toy sizes, on a CPU

Sections, in order; none starts after the deadline, and the JSON file is rewritten after each:
  device        name, memory, versions
  roofline      device-to-device copy bandwidth and the bf16 matmul peak
  update        the fused Triton update against the stacked torch reference over the seed model's live
                parameters (ms, GB/s, and whether they agree bit for bit on this device)
  step          the whole training step (vmap, bf16-mixed, eager) at each M, and with the grouped and
                implicit convolutions: images/s, seed runs per GPU-hour, ms in forward, backward and
                update, peak memory, the top kernels by time
  conv          each convolution form per layer group of the model at one M, forward and backward:
                gemm (im2col + bmm), grouped (replicas as the groups of one channels-last convolution),
                implicit (Triton implicit GEMMs), vmap (torch's own rule), and one shared-weight
                convolution over M·B images (speed of light)
  graphs        the step compiled (on CUDA), eager and replayed as a CUDA graph: ms, and whether both
                train alike
Prints a table per section and ends with one JSON line (every section's results).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

STEPS_PER_RUN = 3910  # the seed recipe: 10 epochs of 391 batches of 128
FULL = {"width": 64, "batch": 128, "step_ms": (64, 128, 256), "m": 128, "copy_mib": 1024, "matmul": 8192,
        "repeats": 10}
DRY = {"width": 4, "batch": 2, "step_ms": (2,), "m": 2, "copy_mib": 4, "matmul": 128, "repeats": 2}


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
from fastvar.models import build_model  # noqa: E402
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
    info = {"device": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu",
            "torch": torch.__version__, "dry_run": ARGS.dry_run}
    if DEVICE.type == "cuda":
        info["memory_gib"] = round(torch.cuda.get_device_properties(DEVICE).total_memory / 2 ** 30, 1)
    import triton
    return {**info, "triton": triton.__version__}


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
        optimizer = BatchedAdam(params, 1e-3, lr_factors=[1.0] * 1000, runs=layout.runs(lambda n: 1.0), low=low)
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
    """At each M with the default convolutions (auto), and at the conv section's M with the grouped and
    (on CUDA: interpreted, it would take minutes) the implicit ones."""
    rows = []
    others = ("grouped", "implicit") if DEVICE.type == "cuda" else ("grouped",)
    for m, conv in [(m, "auto") for m in SIZES["step_ms"]] + [(SIZES["m"], c) for c in others]:
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(DEVICE)
        replicas = seed_replicas(m, conv=conv)
        optimizer = make_optimizer(RECIPES["seed"], replicas.master, replicas.layout, lr_factors=[1.0] * 10_000,
                                   low=replicas.low)
        x, y = batch(m)
        forward, forward_backward, update = step_parts(replicas, optimizer, x, y)
        fwd, fwd_bwd, upd = timed(forward), timed(forward_backward), timed(update)
        step_s = fwd_bwd + upd
        rows.append({"m": m, "conv": conv, "img_s": m * SIZES["batch"] / step_s,
                     "runs_per_hour": 3600 * m / (STEPS_PER_RUN * step_s),
                     "forward_ms": fwd * 1e3, "backward_ms": (fwd_bwd - fwd) * 1e3, "update_ms": upd * 1e3,
                     "peak_mib": peak_memory_mb(DEVICE),
                     "top_kernels": top_kernels(lambda: (forward_backward(), update()))})
        del replicas, optimizer
    return rows


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
    for (c_in, c_out, k, s, p, h), count in layer_groups().items():
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
        row["fastest"] = min(timed_forms, key=timed_forms.get)
        rows.append(row)
    totals = {f"{f}_total_ms": sum(r["count"] * r[f"{f}_ms"] for r in rows) for f in FORMS
              if all(isinstance(r[f"{f}_ms"], float) for r in rows)}
    return rows + [totals]


def graphs_section():
    """The compiled step trained twice from the same start for a few steps, eagerly and as a CUDA graph."""
    from fastvar.engine.graphs import GraphedStep
    m, steps, results, trained = SIZES["m"], 8, {}, {}
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
    if "graph" in trained:
        results["bit_identical"] = all(torch.equal(a, b) for a, b in zip(trained["graph"], trained["eager"]))
        results["speedup"] = results["eager_ms"] / results["graph_ms"]
    else:
        results["graph_ms"] = "needs CUDA"
    return results


SECTIONS = {"device": device_section, "roofline": roofline_section, "update": update_section, "step": step_section,
            "conv": conv_section, "graphs": graphs_section}


def main():
    deadline = time.monotonic() + ARGS.minutes * 60
    report = {}
    for name, section in SECTIONS.items():
        if time.monotonic() > deadline:
            report[name] = "not started: past the deadline"
            continue
        started = time.monotonic()
        try:
            report[name] = section()
        except Exception as e:  # one section's failure is a finding; the others still run
            report[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        print_section(name, report[name], time.monotonic() - started)
        ARGS.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


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
