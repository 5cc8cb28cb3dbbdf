"""Live parameters and the flat buffer: dead taps found from shapes really get no gradient and never
move; leaving them out of the step changes no result; the fused updates equal their reference."""
import json
import sqlite3
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fastvar
from conftest import needs_triton, random_dataset
from fastvar.engine.flat import FlatLayout
from fastvar.engine.live import live_taps
from fastvar.engine.optim import BatchedAdam, BatchedSGD, update_stacked
from fastvar.engine.replicas import Replicas
from fastvar.engine.train import fit
from fastvar.models import build_model
from fastvar.recipes import RECIPES
from fastvar.sources import run_seeds

PRE_LIVE = Path(__file__).parent / "fixtures" / "pre-live"
OPTIMIZERS = {
    "adam": lambda p, wd: torch.optim.Adam(p, lr=1e-2, weight_decay=wd),
    "adamw": lambda p, wd: torch.optim.AdamW(p, lr=1e-2, weight_decay=wd),
    "sgd-nesterov": lambda p, wd: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=wd),
}


def brute_force_live(h, w, k, s, p):
    """The taps of a k×k convolution that multiply some pixel of an h×w image, by enumeration."""
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    return {ki * k + kj for oi in range(ho) for oj in range(wo) for ki in range(k) for kj in range(k)
            if 0 <= oi * s - p + ki < h and 0 <= oj * s - p + kj < w}


@pytest.mark.parametrize("h, w, k, s, p", [(1, 1, 3, 1, 1), (2, 2, 3, 2, 1), (2, 3, 3, 1, 2), (5, 1, 5, 2, 2),
                                           (1, 4, 7, 2, 3), (8, 8, 3, 1, 1)])
def test_live_taps_from_shapes_are_those_that_reach_the_image(h, w, k, s, p):
    conv = torch.nn.Conv2d(2, 3, k, stride=s, padding=p)
    found = live_taps(torch.nn.Sequential(conv), (2, h, w)).get("0", tuple(range(k * k)))
    assert set(found) == brute_force_live(h, w, k, s, p)


def dead_fraction(model, input_shape):
    """The fraction of the model's parameters that are dead taps at this input size."""
    taps = live_taps(model, input_shape)
    dead = sum(w.shape[0] * w.shape[1] * (w.shape[2] * w.shape[3] - len(taps[n]))
               for n, w in ((n, model.get_submodule(n).weight) for n in taps))
    return dead / sum(p.numel() for p in model.parameters())


def test_the_seed_model_on_cifar_has_62_percent_dead_parameters_and_none_at_64_pixels():
    model = build_model("resnet18", init_seed=0).to("meta")
    assert set(live_taps(model, (3, 32, 32))) == {f"layer4.{b}.conv{c}" for b in (0, 1) for c in (1, 2)}
    assert abs(dead_fraction(model, (3, 32, 32)) - 0.621) < 1e-3
    assert live_taps(model, (3, 64, 64)) == {}


def dead_mask(model, input_shape):
    """{parameter name: True where an entry is a dead tap}."""
    masks = {}
    for name, taps in live_taps(model, input_shape).items():
        weight = model.get_submodule(name).weight
        mask = torch.ones(weight.shape[2] * weight.shape[3], dtype=torch.bool)
        mask[list(taps)] = False
        masks[f"{name}.weight"] = mask.view(1, 1, *weight.shape[2:]).expand_as(weight)
    return masks


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_dead_taps_get_exactly_zero_gradients_and_never_move_without_weight_decay(dtype, optimizer):
    """A plain model (nn.Conv2d, torch.optim), real steps on random images: every dead entry's gradient
    is exactly 0 at every step, and the entry keeps its initial bits."""
    model = build_model("resnet18", init_seed=0, width=8, dtype=dtype)
    masks = dead_mask(model, (3, 32, 32))
    params = dict(model.named_parameters())
    initial = {n: params[n].detach().clone() for n in masks}
    opt = OPTIMIZERS[optimizer](model.parameters(), 0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(16, 3, 32, 32, generator=g, dtype=dtype), torch.randint(0, 10, (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for n, mask in masks.items():
            assert torch.count_nonzero(params[n].grad[mask]) == 0 and torch.count_nonzero(params[n].grad[~mask]) > 0
        opt.step()
    for n, mask in masks.items():
        trained = params[n].detach()
        assert torch.equal(trained[mask], initial[n][mask]) and not torch.equal(trained, initial[n])


@pytest.mark.parametrize("optimizer", [(BatchedAdam, {}), (BatchedAdam, {"decoupled": True}),
                                       (BatchedSGD, {"momentum": 0.9, "nesterov": True})], ids=["adam", "adamw", "sgd"])
def test_with_weight_decay_a_decay_only_update_of_dead_entries_equals_the_full_update(optimizer):
    """The full buffer updated with zeros where the dead entries' gradient is, against the live and the
    dead entries updated apart (the dead ones with a gradient of 0): bit for bit."""
    cls, kwargs = optimizer
    g = torch.Generator().manual_seed(1)
    dead = torch.rand(300, generator=g) < 0.6  # the same entries of every replica, as taps are
    start = torch.randn(3, 300, generator=g)
    grads = [torch.randn(3, 300, generator=g) * ~dead for _ in range(4)]
    settings = dict(lr=[1e-2, 3e-3, 1e-3], weight_decay=[5e-4, 1e-2, 0.1], lr_factors=[1.0, 0.8, 0.6, 0.4], **kwargs)
    full = start.clone()
    whole = cls(full, **settings)
    live_part, dead_part = start[:, ~dead].clone(), start[:, dead].clone()
    live_opt, dead_opt = cls(live_part, **settings), cls(dead_part, **settings)
    for grad in grads:
        whole.step((grad,))
        live_opt.step((grad[:, ~dead],))
        dead_opt.step((torch.zeros_like(dead_part),))
    assert torch.equal(full[:, ~dead], live_part) and torch.equal(full[:, dead], dead_part)
    assert not torch.equal(dead_part, start[:, dead])  # decay moved them


def test_the_flat_buffer_holds_every_layer_tensor_as_a_view_and_its_gradient_side_by_side():
    layout = FlatLayout({"conv.weight": (4, 3, 3, 3), "conv.bias": (4,), "bn.weight": (4,), "fc.weight": (2, 4)},
                        orders={"conv.weight": (2, 3, 1, 0)}, lowered={"conv.weight", "conv.bias", "fc.weight"})
    assert [e.name for e in layout.entries.values()] == ["conv.weight", "fc.weight", "conv.bias", "bn.weight"]
    assert [e.start for e in layout.entries.values()] == [0, 112, 128, 144]  # each 64-byte aligned
    assert layout.size == 160 and layout.lowered == 144
    assert layout.spans(lambda n: 0.1 if n.endswith("bias") or n.startswith("bn") else 1.0) == [
        (0, 128, 1.0), (128, 144, 0.1), (144, 160, 0.1)]  # never across the end of the lowered entries
    flat = torch.randn(2, layout.size, requires_grad=True)
    views = layout.views(flat)
    assert list(views) == ["conv.weight", "conv.bias", "bn.weight", "fc.weight"]  # the model's order
    assert views["conv.weight"].shape == (2, 4, 3, 3, 3) and views["conv.weight"][0].permute(2, 3, 1, 0).is_contiguous()
    loss = sum((v * (i + 1)).sum() for i, v in enumerate(views.values()))
    (grad,) = torch.autograd.grad(loss, flat)
    assert torch.equal(layout.views(grad)["bn.weight"], torch.full((2, 4), 3.0))
    low = flat.detach()[:, :layout.lowered].bfloat16()
    mixed = layout.views(low, flat.detach()[:, layout.lowered:])
    assert mixed["conv.weight"].dtype == torch.bfloat16 and mixed["bn.weight"].dtype == torch.float32


def test_replicas_train_and_update_only_live_entries_and_keep_dead_ones_for_the_state_dict():
    replicas = Replicas("resnet18", [0, 1], width=8)
    total = sum(p.numel() for p in build_model("resnet18", init_seed=0, width=8).parameters())
    live = sum(e.size for e in replicas.layout.entries.values())
    dead = sum(e.size for e in replicas.dead_layout.entries.values())
    assert live + dead == total and dead > 0.6 * total
    before = [replicas.state_dict(r) for r in range(2)]
    recipe = RECIPES["seed"].replace(epochs=1, batch_size=16)
    fit(replicas, random_dataset(32, 10), recipe, [run_seeds("all-random", i) for i in range(2)])
    masks = dead_mask(build_model("resnet18", init_seed=0, width=8), (3, 32, 32))
    for r in range(2):
        after = replicas.state_dict(r)
        for name, mask in masks.items():
            assert torch.equal(after[name][mask], before[r][name][mask])
            assert not torch.equal(after[name][~mask], before[r][name][~mask])


@pytest.fixture
def restored_threads():
    """torch's thread count as it was before the test (a study's --threads sets it process-wide)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["adam", "adam-l2", "adamw", "sgd-l2"])
def test_results_equal_a_folder_trained_before_live_parameters_bit_for_bit(name, tmp_path, restored_threads):
    """tests/fixtures/pre-live (made by its make.py at commit c1d14f3, every parameter in the optimizer),
    trained again here: every stored number the same. float32 CPU rounding depends on the processor's
    vector width, so only a processor of the kind that made the folder can compare bits."""
    made_on = json.loads((PRE_LIVE / "made_on.json").read_text())
    if torch.backends.cpu.get_cpu_capability() != made_on["cpu_capability"]:
        pytest.skip(f"the fixture was made on an {made_on['cpu_capability']} CPU; this one is "
                    f"{torch.backends.cpu.get_cpu_capability()}")
    seed = RECIPES["seed"]
    recipes = {"adam": seed, "adam-l2": seed.replace(weight_decay=5e-4),
               "adamw": seed.replace(optimizer=fastvar.Adam(lr=1e-3, weight_decay=0.05, decoupled=True)),
               "sgd-l2": seed.replace(optimizer=fastvar.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4))}
    study = fastvar.Study(experiment="all-random", recipe=recipes[name], runs=2, width=8, epochs=2)
    study.run(tmp_path / name, data=random_dataset(256, 100),
              execution=fastvar.Execution(batch_models=2, threads=1, device="cpu", strategy="loop"))
    columns = "run_index, test_logits, train_loss_curve, train_acc_curve, test_loss, train_loss_batch_mean_curve"
    rows = [sqlite3.connect(folder / "runs.sqlite").execute(f"SELECT {columns} FROM runs ORDER BY run_index").fetchall()
            for folder in (PRE_LIVE / name, tmp_path / name)]
    assert len(rows[0]) == 2 and rows[0] == rows[1]


@pytest.mark.parametrize("case", [(BatchedAdam, {}), (BatchedAdam, {"decoupled": True}),
                                  (BatchedSGD, {"momentum": 0.9, "nesterov": True}), (BatchedSGD, {})],
                         ids=["adam", "adamw", "sgd-nesterov", "sgd"])
@pytest.mark.parametrize("decay", [0.0, 1e-2], ids=["no-decay", "decay"])
def test_the_triton_update_equals_the_torch_reference_bit_for_bit(case, decay):
    """Under TRITON_INTERPRET=1 on a CPU (CUDA where present): odd widths, runs with their own lr factors,
    per-replica lr and decay, a bfloat16 gradient part, and the bfloat16 copy written by the kernel."""
    needs_triton()
    from fastvar.engine import optim_triton
    cls, kwargs = case
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(2)
    m, p, lowered = 3, 2100, 1500
    start = torch.randn(m, p, generator=g).to(device)
    grads = [(torch.randn(m, lowered, generator=g).bfloat16().to(device),
              torch.randn(m, p - lowered, generator=g).to(device)) for _ in range(4)]
    results = []
    for update in ("reference", "triton"):
        params = start.clone()
        low = params[:, :lowered].bfloat16()
        optimizer = cls(params, [1e-3, 3e-3, 5e-4], [0.0, decay, decay / 2], lr_factors=[1.0, 0.9, 0.8, 0.7],
                        spans=[(0, 1000, 1.0), (1000, lowered, 0.5), (lowered, p, 0.5)], low=low, **kwargs)
        optimizer.stacked_update = optim_triton.UPDATES[cls.__name__] if update == "triton" else update_stacked
        for grad in grads:
            optimizer.step(grad)
        results.append((params, low, optimizer.state))
    (params, low, state), (kernel_params, kernel_low, kernel_state) = results
    assert torch.equal(params, kernel_params) and not torch.equal(params, start)
    assert torch.equal(low, kernel_low) and torch.equal(kernel_low, kernel_params[:, :lowered].bfloat16())
    assert all(torch.equal(state[s], kernel_state[s]) for s in state)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("optimizer", [fastvar.Adam(lr=1e-3), fastvar.Adam(lr=1e-3, weight_decay=5e-4),
                                       fastvar.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)],
                         ids=["adam", "adam-l2", "sgd-l2"])
def test_leaving_dead_taps_out_changes_no_bit_of_a_float32_run(strategy, optimizer):
    """On any processor: the same replicas trained with every tap in the step (live_only=False) and
    with the live taps only, the dead ones moved by weight decay alone: every weight and buffer equal."""
    recipe = RECIPES["seed"].replace(optimizer=optimizer, epochs=2, batch_size=16)
    seeds = [run_seeds("all-random", i) for i in range(2)]
    trained = []
    for live_only in (False, True):
        replicas = Replicas("resnet18", [s.init_seed for s in seeds], width=8, strategy=strategy, live_only=live_only)
        assert (replicas.dead.shape[1] > 0) == live_only
        fit(replicas, random_dataset(48, 10), recipe, seeds)
        trained.append([replicas.state_dict(r) for r in range(2)])
    for dense, live in zip(*trained):
        assert all(torch.equal(dense[n], live[n]) for n in dense)
