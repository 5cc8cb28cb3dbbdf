"""The models researchers bring, written by hand: a read-out tied to its embedding (nanoGPT), one block
applied twice, dropout called functionally (F.dropout and its forms, attention's dropout_p,
nn.MultiheadAttention); and the dry step that proves the replicas compute what the model computes."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastvar
from fastvar.engine import dropout as dropout_module
from fastvar.engine import replicas as replicas_module
from fastvar.engine.dropout import FunctionalDropout, on_attention, seed_dropout
from fastvar.engine.flat import aligned
from fastvar.engine.replicas import Replicas
from fastvar.sources import run_seeds
from test_sequences import BATCH, EPOCHS, T, VOCAB, text_data, trained_by_hand


class TiedGPT(nn.Module):
    """nanoGPT's tying: the read-out's weight is the token embedding's (`head.weight = wte.weight`)."""

    def __init__(self, d=16):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, d), nn.Embedding(T, d)
        self.norm, self.mix = nn.LayerNorm(d), nn.Linear(d, d)
        self.head = nn.Linear(d, VOCAB, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, tokens):
        x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1], device=tokens.device))
        x = x + torch.tanh(self.mix(self.norm(x))).cumsum(1) / torch.arange(1, tokens.shape[1] + 1)[:, None]
        return self.head(x)


class TwiceApplied(nn.Module):
    """One block applied twice, and a buffer shared by two modules."""

    def __init__(self, d=12):
        super().__init__()
        self.embed, self.block, self.head = nn.Embedding(VOCAB, d), nn.Sequential(nn.Linear(d, d), nn.Tanh()), \
            nn.Linear(d, VOCAB)
        self.scale_a, self.scale_b = nn.Module(), nn.Module()
        self.scale_a.register_buffer("s", torch.full((d,), 0.5))
        self.scale_b.s = self.scale_a.s

    def forward(self, tokens):
        x = self.embed(tokens)
        return self.head(self.block(self.block(x) * self.scale_a.s) * self.scale_b.s + x)


@pytest.mark.parametrize("factory", [TiedGPT, TwiceApplied], ids=["tied-read-out", "block-twice"])
def test_a_shared_parameter_is_one_parameter_of_each_replica(factory, tmp_path):
    """Loop and vmap equal plain PyTorch (float64, 1e-10) from the stored seeds; the flat buffer holds the
    shared weight once; kept weights load back into the model, tied."""
    data = text_data()
    for strategy in ("loop", "vmap"):
        study = fastvar.Study(model=factory, runs=2, epochs=EPOCHS, precision="float64", save_weights=1,
                              overrides={"batch_size": BATCH})
        out = tmp_path / strategy
        rows = study.run(out, data=data, execution=fastvar.Execution(batch_models=2, strategy=strategy),
                         progress=False).runs()
        for row in rows:
            expected = trained_by_hand(factory, data, run_seeds("all-random", row["run_index"]))
            assert abs(row["test_loss"] - expected) < 1e-10, (strategy, row["run_index"])
        kept = fastvar.weights(out, 0)
        model = factory().double()
        model.load_state_dict(kept)
        assert set(kept) == set(model.state_dict())
    replicas = Replicas(factory, [0, 1], num_classes=VOCAB, input_shape=(T,))
    plain = factory()
    assert list(replicas.layout.names) == [n for n, _ in plain.named_parameters()]  # shared: once
    assert replicas.layout.size == sum(aligned(p.numel()) for p in plain.parameters())


def test_the_dry_step_names_a_parameter_the_replicas_never_filled(monkeypatch, tmp_path):
    """Without the ties put back (today's bug), the tied read-out reads memory no replica filled: one line."""
    monkeypatch.setattr(replicas_module, "retie", lambda module, aliases: module)
    replicas_module.template.cache_clear()
    try:
        for strategy in ("loop", "vmap"):
            with pytest.raises(fastvar.ConfigError, match="replica 0 never filled head.weight") as caught:
                fastvar.Study(model=TiedGPT, runs=2).run(tmp_path / strategy, data=text_data(),
                                                         execution=fastvar.Execution(strategy=strategy))
            assert "\n" not in str(caught.value) and not (tmp_path / strategy).exists()
    finally:
        replicas_module.template.cache_clear()


class BufferMissed(nn.Module):
    """A buffer drawn at init, which the test's replicas lose (as a stacking bug would)."""

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(20, 8), nn.Linear(8, 3)
        self.register_buffer("offset", torch.randn(8))

    def forward(self, x):
        return self.head(self.body(x) + self.offset)


def test_the_dry_step_names_a_buffer_that_differs(monkeypatch, tmp_path):
    data = fastvar.Dataset.from_arrays(np.random.default_rng(0).normal(size=(32, 20)).astype(np.float32),
                                       np.arange(32) % 3, np.zeros((6, 20), np.float32), np.arange(6) % 3)
    real = replicas_module.build_model

    def zeroed(model, **kwargs):  # the replicas' own copies lose their buffer's value
        module = real(model, **kwargs)
        if getattr(model, "__name__", "") == "BufferMissed" and kwargs.get("width", 0) is None:
            module.offset.zero_()
        return module
    monkeypatch.setattr(replicas_module, "build_model", zeroed)
    with pytest.raises(fastvar.ConfigError, match="replica 0 holds another offset"):
        fastvar.Study(model=BufferMissed, runs=2).run(tmp_path / "s", data=data)
    assert not (tmp_path / "s").exists()


class FunctionalDropouts(nn.Module):
    """Every functional dropout torch has, as models call them (24 features, read as 4 positions × 6)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.mha = nn.MultiheadAttention(8, 2, dropout=0.3, batch_first=True)
        self.channels, self.alpha, self.feature_alpha = nn.Dropout1d(0.2), nn.AlphaDropout(0.1), \
            nn.FeatureAlphaDropout(0.1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = F.dropout(self.embed(x.view(-1, 4, 6)), 0.25, self.training)
        h = h + self.mha(h, h, h, need_weights=True)[0] + self.mha(h, h, h, need_weights=False)[0]
        q = h.view(*h.shape[:2], 2, 4).transpose(1, 2)
        attended = F.scaled_dot_product_attention(q, q, q, dropout_p=0.4 if self.training else 0.0, is_causal=True)
        h = h + attended.transpose(1, 2).reshape(h.shape)
        h = self.channels(h.transpose(1, 2)).transpose(1, 2)
        h = self.feature_alpha(self.alpha(h).unsqueeze(-1)).squeeze(-1)
        return self.head(F.dropout2d(h.unsqueeze(-1), 0.1, self.training).squeeze(-1)).mean(1)


def feature_sequences(n_train=24, n_test=8):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n_train + n_test, 24)).astype(np.float32)
    y = (x[:, :6].sum(1) > 0).astype(np.int64) + (x[:, 6:12].sum(1) > 1)
    return fastvar.Dataset.from_arrays(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def test_every_functional_dropout_draws_from_the_runs_dropout_seed(tmp_path):
    """vary-dropout: loop equals vmap (float64), a run alone equals it in a batch, each seed its own run,
    and the global generator is never touched."""
    data = feature_sequences()
    rows = {}
    state = torch.get_rng_state()
    for name, strategy, m in (("loop", "loop", 3), ("vmap", "vmap", 3), ("alone", "loop", 1)):
        study = fastvar.Study(experiment="vary-dropout", model=FunctionalDropouts, runs=3, epochs=2,
                              precision="float64", overrides={"batch_size": 8})
        execution = fastvar.Execution(batch_models=m, strategy=strategy)
        rows[name] = study.run(tmp_path / name, data=data, execution=execution, progress=False).runs()
    assert torch.equal(state, torch.get_rng_state())
    assert [r["test_loss"] for r in rows["vmap"]] == pytest.approx([r["test_loss"] for r in rows["loop"]], abs=1e-10)
    assert [r["train_loss_curve"] for r in rows["alone"]] == [r["train_loss_curve"] for r in rows["loop"]]
    assert len({r["train_loss_curve"][0] for r in rows["loop"]}) == 3  # only the dropout seed varies
    assert len({(r["init_seed"], r["order_seed"]) for r in rows["loop"]}) == 1


def test_a_functional_dropout_keeps_its_probability_and_seed():
    """Each form drops about p of its elements (or channels), from the seed and step alone."""
    model = nn.Module()
    seed_dropout(model, functional=True)
    x = torch.ones(64, 32, 8, 8, dtype=torch.float64)
    normal = torch.randn(100_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torchs = F.alpha_dropout(normal, 0.2, training=True)
    masks = {}
    for seed, step in ((3, 0), (3, 0), (4, 0), (3, 1)):
        model.fastvar_dropout_seed.fill_(seed)
        model.fastvar_dropout_step.fill_(step)
        with FunctionalDropout(model):
            out = F.dropout(x, 0.3)
            channels = F.dropout2d(x, 0.5)
            alpha = F.alpha_dropout(normal, 0.2, training=True)
        assert abs((out == 0).double().mean().item() - 0.3) < 0.01 and out.max().item() == pytest.approx(1 / 0.7)
        assert ((channels == 0).all((2, 3)) | (channels != 0).all((2, 3))).all()
        assert abs((channels[:, :, 0, 0] == 0).double().mean().item() - 0.5) < 0.05
        a = 1 / math.sqrt((dropout_module.ALPHA ** 2 * 0.2 + 1) * 0.8)
        gone = dropout_module.ALPHA * a * (0.2 - 1)  # what a dropped element becomes
        both = ((alpha - gone).abs() > 1e-9) & ((torchs - gone).abs() > 1e-9)  # kept by both: one affine map of x
        assert torch.allclose(alpha[both], torchs[both], rtol=0, atol=1e-12) and both.double().mean() > 0.6
        assert ((torchs - gone).abs() < 1e-12).double().mean().item() == pytest.approx(0.2, abs=0.01)
        assert abs(alpha.mean().item()) < 0.02 and abs(alpha.std().item() - 1) < 0.02  # mean 0, SD 1 kept
        masks.setdefault((seed, step), []).append(out)
    assert torch.equal(*masks[3, 0]) and not torch.equal(masks[3, 0][0], masks[4, 0][0])
    assert not torch.equal(masks[3, 0][0], masks[3, 1][0])


@pytest.mark.parametrize("mask", ["none", "causal", "bool", "float", "gqa"])
def test_the_written_out_attention_equals_torchs(mask):
    """on_attention with dropout that keeps every weight (p below one draw in 2**32) against
    F.scaled_dot_product_attention without dropout, float64, on odd shapes."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, 5, 7, generator=g, dtype=torch.float64)
    kv_heads = 2 if mask == "gqa" else 4
    k, v = (torch.randn(3, kv_heads, 6, 7, generator=g, dtype=torch.float64) for _ in range(2))
    options = {"none": {}, "causal": {"is_causal": True}, "gqa": {"enable_gqa": True},
               "bool": {"attn_mask": torch.rand(5, 6, generator=g) > 0.3},
               "float": {"attn_mask": torch.randn(3, 1, 5, 6, generator=g, dtype=torch.float64)}}[mask]
    if mask == "bool":
        options["attn_mask"][:, 0] = True  # every row attends somewhere
    model = nn.Module()
    seed_dropout(model, functional=True)
    mode = FunctionalDropout(model)
    tiny = 1e-12
    written = on_attention(mode, q, k, v, dropout_p=tiny, scale=0.3, **options) * (1 - tiny)
    expected = F.scaled_dot_product_attention(q, k, v, scale=0.3, **options)
    assert torch.allclose(written, expected, rtol=0, atol=1e-12)


class HuggingFaceLike(nn.Module):
    """A forward that returns what a Hugging Face model does: an object with .logits, and a cache
    (not a tensor) beside it unless told use_cache=False."""

    class Output(dict):
        def __getattr__(self, name):
            return self[name]

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(VOCAB, 8), nn.Linear(8, VOCAB)

    def forward(self, input_ids, use_cache=True):
        logits = self.head(torch.tanh(self.embed(input_ids)))
        return self.Output(logits=logits, past_key_values=object() if use_cache else None)


class TupleOutput(TiedGPT):
    def forward(self, tokens):
        return super().forward(tokens), {"cache": "of some kind"}


@pytest.mark.parametrize("factory", [HuggingFaceLike, TupleOutput], ids=["logits-attribute", "tuple"])
def test_a_forward_that_returns_an_object_or_a_tuple_is_read_as_its_logits(factory, tmp_path):
    data = text_data()
    for strategy in ("loop", "vmap"):
        study = fastvar.Study(model=factory, runs=2, epochs=EPOCHS, precision="float64",
                              overrides={"batch_size": BATCH})
        rows = study.run(tmp_path / strategy, data=data, execution=fastvar.Execution(strategy=strategy),
                         progress=False).runs()
        for row in rows:
            expected = trained_by_hand(factory, data, run_seeds("all-random", row["run_index"]))
            assert abs(row["test_loss"] - expected) < 1e-10


def test_a_forward_that_returns_no_logits_is_one_line(tmp_path):
    class Words(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, VOCAB)

        def forward(self, tokens):
            return "no logits here"
    with pytest.raises(fastvar.ConfigError, match="returned str; fastvar reads a tensor of logits") as caught:
        fastvar.Study(model=Words, runs=1).run(tmp_path / "s", data=text_data())
    assert "\n" not in str(caught.value) and not (tmp_path / "s").exists()


def test_functional_dropout_is_found_only_where_a_model_calls_it():
    plain = replicas_module.template(TiedGPT, None, torch.float32, None, False, "small", VOCAB, (T,))
    seeded = replicas_module.template(FunctionalDropouts, None, torch.float32, None, False, "small", 3, (24,))
    assert not hasattr(plain, dropout_module.SEEDS) and hasattr(seeded, dropout_module.SEEDS)
    assert math.isclose(dropout_module.ALPHA, 1.0507009873554805 * 1.6732632423543772)


@pytest.mark.parametrize("padding_idx", [0, 3, None])
def test_the_padded_embedding_under_vmap_equals_nn_embedding_per_replica(padding_idx):
    """PaddedEmbedding's gradient under vmap against nn.Embedding(padding_idx) replica by replica, on
    fresh random weights and tokens (float64). torch's own vmap rule zeroes the padding row's
    gradient for the first replica only (torch 2.13): what this layer exists for."""
    from torch.func import functional_call, vmap
    from fastvar.engine.vmap_layers import PaddedEmbedding
    g = torch.Generator().manual_seed(1)
    weights = torch.randn(3, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 7, (3, 4, 6), generator=g)
    upstream = torch.randn(3, 4, 6, 5, generator=g, dtype=torch.float64)
    layer = nn.Embedding(7, 5, padding_idx=padding_idx).double()
    layer.__class__ = PaddedEmbedding
    out = vmap(lambda w, t: functional_call(layer, {"weight": w}, (t,)))(weights, tokens)
    (grad,) = torch.autograd.grad((out * upstream).sum(), weights)
    for r in range(3):
        plain = nn.Embedding(7, 5, padding_idx=padding_idx).double()
        with torch.no_grad():
            plain.weight.copy_(weights[r])
        value = plain(tokens[r])
        (expected,) = torch.autograd.grad((value * upstream[r]).sum(), plain.weight)
        assert torch.equal(out[r], value.detach()) and torch.allclose(grad[r], expected, rtol=0, atol=1e-12)


def test_the_readme_transformers_example_runs_as_written(tmp_path, monkeypatch, capsys):
    import re
    from conftest import ROOT
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- transformers-example -->\s*```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    rows = fastvar.results(tmp_path / "results" / "tiny-gpt2")
    assert len(rows) == 4 and len({r["dropout_seed"] for r in rows}) == 4
    assert float(capsys.readouterr().out.strip().splitlines()[-1]) > 0


class SharedConvTwice(nn.Module):
    """One nn.Conv2d applied at 8×8 and again at 2×2 (a GEMM convolution with dead taps at the small
    size), and a read-out tied to a frozen embedding-like table."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.pool, self.head = nn.AvgPool2d(4), nn.Linear(4, 5)

    def forward(self, x):
        h = torch.relu(self.conv(torch.relu(self.stem(x))))
        return self.head(torch.relu(self.conv(self.pool(h))).mean((2, 3)))


def test_a_conv_applied_at_two_sizes_trains_as_plain_pytorch(tmp_path):
    """Its live taps differ by size, so it is read whole: loop and vmap equal plain PyTorch (float64)."""
    import test_custom_models as own
    data = own.image_data((8, 8, 1), 5)
    for strategy in ("loop", "vmap"):
        study = fastvar.Study(model=SharedConvTwice, runs=2, epochs=own.EPOCHS, precision="float64", save_weights=2,
                              overrides={"batch_size": own.BATCH})
        out = tmp_path / strategy
        study.run(out, data=data, execution=fastvar.Execution(batch_models=2, strategy=strategy), progress=False)
        for i in range(2):
            expected = own.trained_by_hand(SharedConvTwice, data, run_seeds("all-random", i))
            kept = fastvar.weights(out, i)
            assert all(torch.allclose(kept[k], v, rtol=0, atol=1e-10) for k, v in expected.items()), (strategy, i)


class FrozenTiedGPT(TiedGPT):
    def __init__(self):
        super().__init__()
        self.wte.weight.requires_grad_(False)  # the tied table frozen: both its uses read it as loaded


def test_a_tied_weight_under_mixed_precision_frozen_and_in_snapshots(tmp_path):
    """bf16-mixed under both strategies (the dry step's tolerance for bfloat16 compute), a frozen tied
    table kept bit for bit, and snapshots of a tied model: each trains, none diverges."""
    data = text_data()
    for strategy in ("loop", "vmap"):
        rows = {precision: fastvar.Study(model=TiedGPT, runs=2, epochs=1, precision=precision,
                                         overrides={"batch_size": BATCH}).run(
            tmp_path / f"{precision}-{strategy}", data=data, execution=fastvar.Execution(strategy=strategy),
            progress=False).runs() for precision in ("bf16-mixed", "float32")}
        for low, full in zip(rows["bf16-mixed"], rows["float32"]):  # bfloat16 compute: within its rounding
            assert low["diverged"] == 0 and low["train_loss_curve"][0] == pytest.approx(full["train_loss_curve"][0],
                                                                                        rel=1e-2)
    study = fastvar.Study(model=FrozenTiedGPT, runs=2, epochs=1, save_weights=1, overrides={"batch_size": BATCH})
    out = study.run(tmp_path / "frozen", data=data, execution=fastvar.Execution(strategy="vmap"), progress=False)
    kept = fastvar.weights(out.folder, 0)
    torch.manual_seed(run_seeds("all-random", 0).init_seed)
    assert torch.equal(kept["wte.weight"], FrozenTiedGPT().wte.weight) and kept["head.weight"] is kept["wte.weight"]
    snapshots = fastvar.Study(model=TiedGPT, runs=2, epochs=2, snapshots=2, token_logits=True,
                              overrides={"batch_size": BATCH}).run(tmp_path / "snap", data=data, progress=False)
    assert fastvar.analyze(snapshots.folder)[0].metrics["snapshots"]["cycles"] == 2


def test_the_loop_replicas_compute_the_models_logits_bit_for_bit():
    """Where the same kernels run (the loop strategy, no layer rewritten) the dry step's comparison is exact."""
    x = torch.randint(0, VOCAB, (4, T), generator=torch.Generator().manual_seed(2))
    replicas = Replicas(TiedGPT, [5, 6], strategy="loop", num_classes=VOCAB, input_shape=(T,))
    logits = replicas.logits(x)
    for r, seed in enumerate((5, 6)):
        torch.manual_seed(seed)
        assert torch.equal(logits[r], TiedGPT().eval()(x).detach())


class OnlyFunctionalDropout(nn.Module):
    """No dropout layer at all: F.dropout in its forward is its one source of dropout."""

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(24, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(F.dropout(torch.tanh(self.body(x)), 0.3, self.training))


def test_a_model_whose_only_dropout_is_functional_has_the_dropout_source(tmp_path):
    """vary-dropout is not refused, each run records its own dropout seed, and the seed alone moves it."""
    from fastvar.models import has_own_dropout
    assert has_own_dropout(OnlyFunctionalDropout) and not has_own_dropout(TiedGPT)
    rows = fastvar.Study(experiment="vary-dropout", model=OnlyFunctionalDropout, runs=2, epochs=1,
                         overrides={"batch_size": 8}).run(tmp_path / "s", data=feature_sequences(), progress=False).runs()
    assert len({r["dropout_seed"] for r in rows}) == 2 and None not in {r["dropout_seed"] for r in rows}
    assert rows[0]["init_seed"] == rows[1]["init_seed"] and rows[0]["train_loss_curve"] != rows[1]["train_loss_curve"]


def test_a_model_with_nn_dropout_alone_runs_without_the_functional_mode():
    """nn.Dropout calls F.dropout itself; swapped for SeededDropout first, it is no functional dropout."""
    from test_sequences import DropoutTransformer
    structure = replicas_module.template(DropoutTransformer, None, torch.float32, None, False, "small", VOCAB, (T,))
    assert not hasattr(structure, dropout_module.SEEDS)
