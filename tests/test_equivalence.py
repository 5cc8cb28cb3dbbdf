"""vmap, loop and a plain, independently trained nn.Module compute the same training runs."""
import pytest
import torch
import torch.nn.functional as F

from fastvar.augment import augment
from fastvar.models import ResNet18, build_model
from fastvar.engine.replicas import Replicas
from fastvar.sources import run_seeds
from fastvar.recipes import RECIPES, SGD, Adam, Augment
from fastvar.engine.train import fit, train_replicas
from conftest import named_gradients, random_dataset

ADAM = Adam(lr=1e-3)
NESTEROV = SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)


def tiny_recipe(optimizer, epochs=2, batch_size=16):
    return RECIPES["seed"].replace(epochs=epochs, batch_size=batch_size, optimizer=optimizer)


def reference_run(init_seed, order_seed, data, optimizer_spec, epochs, batch_size, mixed=False):
    """The seed study's loop written from scratch: torch.optim, plain indexing, no fastvar code but
    the architecture, seeded as torchvision users seed it. In float64, or with `mixed` in float32
    under torch.autocast to bfloat16."""
    torch.manual_seed(init_seed)
    model = ResNet18(width=4).to(torch.float32 if mixed else torch.float64)
    spec = optimizer_spec.to_dict()
    if spec.pop("name") == "adam":
        optimizer = torch.optim.Adam(model.parameters(), **spec)
    else:
        optimizer = torch.optim.SGD(model.parameters(), **spec)
    # ToTensor and Normalize compute in float32; the model then sees the result in its own dtype.
    images = ((data.x_train.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5).to(next(model.parameters()).dtype)
    order = torch.Generator().manual_seed(order_seed)
    for _ in range(epochs):
        perm = torch.randperm(len(images), generator=order)
        for start in range(0, len(images), batch_size):
            idx = perm[start:start + batch_size]
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
                logits = model(images[idx])
            F.cross_entropy(logits.to(images.dtype), data.y_train[idx]).backward()  # bfloat16 logits upcast
            optimizer.step()
    return model


@pytest.mark.parametrize("optimizer", [ADAM, NESTEROV], ids=["adam", "sgd"])
def test_vmap_loop_and_plain_training_agree_in_float64(optimizer):
    data = random_dataset(56, 10)  # 4 steps an epoch, the last one partial (56 = 3 × 16 + 8)
    seeds = [run_seeds("all-random", i) for i in range(3)]
    recipe = tiny_recipe(optimizer, epochs=2)  # 8 optimizer steps
    trained = {}
    for strategy in ("loop", "vmap"):
        replicas = Replicas("resnet18", [s.init_seed for s in seeds], width=4, strategy=strategy, dtype=torch.float64)
        fit(replicas, data, recipe, seeds)
        trained[strategy] = replicas
    for r, s in enumerate(seeds):
        reference = reference_run(s.init_seed, s.order_seed, data, optimizer, epochs=2, batch_size=16).state_dict()
        for strategy, replicas in trained.items():
            state = replicas.state_dict(r)
            assert state.keys() == reference.keys()
            assert all(t.is_contiguous() for t in state.values())  # whatever layout the stacks have
            for name, expected in reference.items():
                assert torch.allclose(state[name], expected, rtol=0, atol=1e-10), (strategy, r, name)
        initial = Replicas("resnet18", [s.init_seed], width=4, dtype=torch.float64).params["conv1.weight"][0]
        assert (reference["conv1.weight"] - initial).abs().max() > 1e-4  # training moved the weights


@pytest.mark.parametrize("augmentation", [Augment(), Augment(flip=True, pad=4, cutout=8)], ids=["plain", "augmented"])
def test_loop_run_is_bit_identical_alone_or_in_a_batch(augmentation):
    data = random_dataset(64, 20)
    recipe = tiny_recipe(ADAM, epochs=2).replace(augment=augmentation)
    seeds = [run_seeds("all-random", i) for i in range(4)]
    batch = train_replicas(data, recipe, seeds, width=4, strategy="loop", dtype=torch.float32)
    for k in (0, 2):
        alone = train_replicas(data, recipe, [seeds[k]], width=4, strategy="loop", dtype=torch.float32)[0]
        assert torch.equal(alone["test_logits"], batch[k]["test_logits"])
        assert alone["train_loss_curve"] == batch[k]["train_loss_curve"]
    assert not torch.equal(batch[0]["test_logits"], batch[1]["test_logits"])


def test_vmap_float32_is_batch_independent_within_tolerance_over_five_steps():
    data = random_dataset(80, 10)
    recipe = tiny_recipe(ADAM, epochs=1, batch_size=16)  # 5 steps
    seeds = [run_seeds("all-random", i) for i in range(4)]
    batch = Replicas("resnet18", [s.init_seed for s in seeds], width=4, strategy="vmap")
    fit(batch, data, recipe, seeds)
    alone = Replicas("resnet18", [seeds[3].init_seed], width=4, strategy="vmap")
    fit(alone, data, recipe, seeds[3:])
    for name, value in alone.params.items():
        assert torch.allclose(batch.params[name][3], value[0], rtol=0, atol=1e-4), name


@pytest.mark.parametrize("width", [4, 16])
def test_float32_gradients_match_a_plain_contiguous_model(width):
    """Guards the oneDNN channels-last bug (wrong weight gradients of narrow strided 1x1 convs):
    one step's gradients of every replica equal those of the plain model on a plain NCHW batch."""
    data = random_dataset(32, 10)
    seeds = [run_seeds("all-random", i) for i in range(2)]
    indices = torch.stack([torch.randperm(32, generator=torch.Generator().manual_seed(i))[:16] for i in range(2)])
    x = augment(data.x_train, indices, torch.zeros(2, dtype=torch.int64), 0, mean=[0.5] * 3, std=[0.5] * 3)
    for strategy in ("loop", "vmap"):
        replicas = Replicas("resnet18", [s.init_seed for s in seeds], width=width, strategy=strategy)
        _, _, step = replicas.train_step_grads(x, data.y_train[indices])
        grads = named_gradients(replicas, step)
        for r, s in enumerate(seeds):
            model = build_model("resnet18", init_seed=s.init_seed, width=width)
            loss = F.cross_entropy(model(x[r].contiguous()), data.y_train[indices[r]])
            expected = torch.autograd.grad(loss, list(model.parameters()))
            for (name, _), g in zip(model.named_parameters(), expected):
                assert torch.allclose(grads[name][r], g, rtol=1e-3, atol=1e-5), (strategy, width, name)


def test_bf16_mixed_trains_as_torch_autocast_does():
    """bf16-mixed, spelled out (weights cast, BatchNorm in float32), against torch.autocast with
    torch.optim.Adam. bfloat16 rounding flips the sign of some early Adam updates, so runs cannot
    agree closely; the check is that fastvar's run is nearer autocast's than a float32 run is
    (computing in float32 by mistake would fail it), for both strategies."""
    data = random_dataset(48, 10)
    recipe = tiny_recipe(ADAM, epochs=1)  # 3 steps
    seed = run_seeds("all-random", 0)
    autocast, full = (reference_run(seed.init_seed, seed.order_seed, data, ADAM, epochs=1, batch_size=16,
                                    mixed=mixed).state_dict() for mixed in (True, False))
    for strategy in ("loop", "vmap"):
        replicas = Replicas("resnet18", [seed.init_seed], width=4, strategy=strategy, compute_dtype=torch.bfloat16)
        fit(replicas, data, recipe, [seed])
        state = replicas.state_dict(0)
        assert state["conv1.weight"].dtype == torch.float32  # master weights stay float32
        for name in ("conv1.weight", "layer2.0.conv1.weight", "layer4.1.conv2.weight", "fc.weight"):
            bf16_spread = (full[name] - autocast[name]).abs().mean()
            assert (state[name] - autocast[name]).abs().mean() < 0.75 * bf16_spread, (strategy, name)
        for name in ("bn1.running_mean", "layer3.0.bn2.running_var"):
            assert torch.allclose(state[name], autocast[name], rtol=2e-2, atol=2e-3), (strategy, name)
