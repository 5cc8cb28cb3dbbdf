"""Token data and sequence models of a researcher's own: a causal transformer and a GRU language
model trained by both strategies, equal (float64) to plain PyTorch from the stored seeds, the same
bits alone and in a batch under the loop; per-token metrics against numpy written out here."""
import math
from itertools import combinations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastvar
from fastvar import cli
from fastvar.analysis.metrics import summarize_tokens
from fastvar.data import IGNORE, Dataset
from fastvar.errors import DataError
from fastvar.sources import run_seeds
from fastvar.store import Store
from conftest import logits_of, random_dataset

VOCAB, T = 13, 10


class TinyCausalTransformer(nn.Module):
    """One pre-norm block of causal self-attention written out, and a feed-forward layer."""

    def __init__(self, vocab=VOCAB, d=16, heads=2, length=T):
        super().__init__()
        self.heads = heads
        self.embed, self.position = nn.Embedding(vocab, d), nn.Parameter(0.02 * torch.randn(length, d))
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        b, t = tokens.shape
        x = self.embed(tokens) + self.position[:t]
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).triu(1)
        attended = scores.masked_fill(causal, float("-inf")).softmax(-1) @ v
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, -1))
        return self.head(x + self.ff(self.norm2(x)))


class TinyGRU(nn.Module):
    """A GRU language model stepped through time by nn.GRUCell."""

    def __init__(self, vocab=VOCAB, d=12):
        super().__init__()
        self.embed, self.cell, self.head = nn.Embedding(vocab, d), nn.GRUCell(d, d), nn.Linear(d, vocab)

    def forward(self, tokens):
        x = self.embed(tokens)
        h, states = x.new_zeros(x.shape[0], self.cell.hidden_size), []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            states.append(h)
        return self.head(torch.stack(states, 1))


class GRUClassifier(nn.Module):
    """nn.GRU over the sequence, its last state classified (4 classes)."""

    def __init__(self):
        super().__init__()
        self.embed, self.gru, self.head = nn.Embedding(VOCAB, 8), nn.GRU(8, 8, batch_first=True), nn.Linear(8, 4)

    def forward(self, tokens):
        return self.head(self.gru(self.embed(tokens))[0][:, -1])


def text_data(n_train=40, n_test=12, seed=0, ignore_first=True):
    """Windows of a random sequence with some structure (token t+1 often follows token t); the targets
    are the next tokens, the first position of each test window ignored."""
    rng = np.random.default_rng(seed)
    steps = np.where(rng.random(n_train + n_test + T * 60) < 0.7, 1, rng.integers(0, VOCAB, n_train + n_test + T * 60))
    text = np.cumsum(steps) % VOCAB
    windows = np.stack([text[i:i + T + 1] for i in range(0, (n_train + n_test) * 5, 5)])
    x, y = windows[:, :-1], windows[:, 1:].copy()
    if ignore_first:
        y[n_train:, 0] = IGNORE
    return Dataset.from_arrays(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


EPOCHS, BATCH = 2, 16  # 3 steps an epoch, the last one partial


def trained_by_hand(factory, data, seeds, pad_id=None):
    """A run in plain PyTorch: built under its init seed, epoch e's order the e-th randperm of its order
    generator, the mean cross-entropy over each batch's target tokens, torch.optim.Adam; its test loss.
    With `pad_id`, the model is given attention_mask = (tokens != pad_id), as a Hugging Face user gives it."""
    def masked(x):
        return {} if pad_id is None else {"attention_mask": (x != pad_id).long()}
    torch.manual_seed(seeds.init_seed)
    model = factory().double()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(seeds.order_seed)
    for _ in range(EPOCHS):
        for batch in torch.randperm(len(data.y_train), generator=order).split(BATCH):
            logits = logits_of(model(data.x_train[batch], **masked(data.x_train[batch])))
            loss = F.cross_entropy(logits.flatten(0, 1), data.y_train[batch].flatten(), ignore_index=IGNORE)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = logits_of(model(data.x_test, **masked(data.x_test)))
    return F.cross_entropy(logits.flatten(0, 1), data.y_test.flatten(), ignore_index=IGNORE).item()


@pytest.mark.parametrize("factory", [TinyCausalTransformer, TinyGRU], ids=["transformer", "gru"])
def test_a_language_model_trains_as_plain_pytorch_does_with_both_strategies(factory, tmp_path):
    data = text_data()
    for strategy in ("loop", "vmap"):
        study = fastvar.Study(model=factory, runs=3, epochs=EPOCHS, precision="float64", overrides={"batch_size": BATCH})
        store = study.run(tmp_path / strategy, data=data, execution=fastvar.Execution(batch_models=2, strategy=strategy),
                          progress=False)
        rows = store.runs()
        for row in rows:
            expected = trained_by_hand(factory, data, run_seeds("all-random", row["run_index"]))
            assert abs(row["test_loss"] - expected) < 1e-10, (strategy, row["run_index"])
            assert row["test_token_logprob"].shape == row["test_token_argmax"].shape == (12, T)
            assert row["test_token_logprob"][:, 0].tolist() == [0.0] * 12  # ignored positions score nothing
        assert len({r["test_loss"] for r in rows}) == 3
        scored = data.y_test != IGNORE
        hits = [(torch.tensor(r["test_token_argmax"]) == data.y_test)[scored].double().mean().item() for r in rows]
        assert [r["test_acc"] for r in rows] == pytest.approx(hits, abs=1e-12)  # token accuracy over scored tokens


def test_a_language_model_keeps_its_whole_logits_where_asked(tmp_path):
    data = text_data()
    study = dict(model=TinyCausalTransformer, runs=3, epochs=1, overrides={"batch_size": BATCH})
    out = tmp_path / "whole"
    rows = fastvar.Study(**study, token_logits=True).run(out, data=data, progress=False).runs()
    scored = data.y_test != IGNORE
    for row in rows:  # the float16 logits agree with the outputs kept from the float32 ones
        logits = torch.tensor(row["test_logits"]).view(len(data.y_test), T, -1).double()
        assert logits.shape[-1] == data.vocabulary
        log_p = F.log_softmax(logits, -1).gather(-1, data.y_test.clamp(min=0)[..., None])[..., 0]
        assert torch.allclose(log_p[scored], torch.tensor(row["test_token_logprob"]).double()[scored], atol=2e-2)
        agree = (logits.argmax(-1) == torch.tensor(row["test_token_argmax"]))[scored].double().mean()
        assert agree > 0.98
    m = fastvar.analyze(out)[0].metrics
    assert all(np.isfinite(m[k]) for k in ("ensemble_acc", "ece", "spearman", "ensemble_gain", "ppl_mean"))
    assert m["ensembles"]["1"]["groups"] == 3 and abs(m["ensembles"]["1"]["acc"] - m["acc_mean"]) < 0.02
    plain = fastvar.Study(**study).run(tmp_path / "plain", data=data, progress=False).runs()
    assert [r["test_loss"] for r in plain] == [r["test_loss"] for r in rows]  # keeping them changes no run
    assert plain[0]["test_logits"].size == 0 and np.isnan(fastvar.analyze(tmp_path / "plain")[0].metrics["ece"])
    images = random_dataset(16, 10)
    with pytest.raises(fastvar.ConfigError, match="token_logits=True keeps a language model's whole logits"):
        fastvar.Study(model="linear", runs=1, token_logits=True).run(tmp_path / "images", data=images)
    assert not (tmp_path / "images").exists()


def test_a_language_models_snapshots_need_and_keep_its_whole_logits(tmp_path):
    data = text_data()
    study = dict(model=TinyCausalTransformer, runs=2, epochs=2, snapshots=2, overrides={"batch_size": BATCH})
    with pytest.raises(fastvar.ConfigError, match="snapshots=2 keeps each cycle's test logits.*token_logits=True"):
        fastvar.Study(**study).run(tmp_path / "refused", data=data)
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "snapshots"
    rows = fastvar.Study(**study, token_logits=True).run(out, data=data, progress=False).runs()
    cycles = Store(out).snapshots()
    assert {k: v.shape for k, v in cycles.items()} == {r["run_key"]: (2, 12, T * data.vocabulary) for r in rows}
    assert all(np.array_equal(cycles[r["run_key"]][-1], r["test_logits"]) for r in rows)  # the last cycle's, kept
    m = fastvar.analyze(out)[0].metrics
    assert m["snapshots"]["cycles"] == 2 and m["snapshots"]["runs"] == 2 and 0 <= m["snapshots"]["acc"] <= 1


def test_a_loop_run_is_the_same_alone_and_in_a_batch(tmp_path):
    data = text_data()
    runs = {}
    for name, batch_models in (("batch", 3), ("alone", 1)):
        study = fastvar.Study(model=TinyCausalTransformer, runs=3, epochs=1, overrides={"batch_size": BATCH})
        execution = fastvar.Execution(batch_models=batch_models, strategy="loop")
        runs[name] = study.run(tmp_path / name, data=data, execution=execution, progress=False).runs()
    for a, b in zip(runs["batch"], runs["alone"]):
        assert np.array_equal(a["test_token_logprob"], b["test_token_logprob"])
        assert a["train_loss_curve"] == b["train_loss_curve"]


class LSTMLanguageModel(nn.Module):
    """nn.LSTM of two layers over the sequence, a read-out at every position."""

    def __init__(self, vocab=VOCAB, d=8):
        super().__init__()
        self.embed, self.lstm, self.head = nn.Embedding(vocab, d), nn.LSTM(d, d, 2, batch_first=True), nn.Linear(d, vocab)

    def forward(self, tokens):
        return self.head(self.lstm(self.embed(tokens))[0])


class ItemReader(nn.Module):
    """Reads a number on the host in its forward (.item()): no vmap, whatever the rule."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(VOCAB, 8), nn.Linear(8, 4)

    def forward(self, tokens):
        h = self.embed(tokens).mean(1)
        return self.head(h / (1 + h.abs().max().item()))


def test_token_classification_and_an_nn_gru_under_both_strategies(tmp_path):
    """nn.GRU's fused op has no batching rule; under vmap it runs decomposed, as the loop's runs do."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, VOCAB, (40, T))
    data = Dataset.from_arrays(x[:32], x[:32, -1] % 4, x[32:], x[32:, -1] % 4)
    assert data.kind == "tokens" and not data.token_targets and data.num_classes == 4
    rows = {strategy: fastvar.Study(model=GRUClassifier, runs=2, epochs=2, precision="float64",
                                    overrides={"batch_size": 8}).run(
        tmp_path / strategy, data=data, execution=fastvar.Execution(strategy=strategy, batch_models=2),
        progress=False).runs() for strategy in ("loop", "vmap")}
    assert rows["loop"][0]["test_logits"].shape == (8, 4) and rows["loop"][0]["test_token_logprob"] is None
    for loop, vmapped in zip(rows["loop"], rows["vmap"]):
        assert abs(loop["test_loss"] - vmapped["test_loss"]) < 1e-10
        assert np.allclose(loop["train_loss_curve"], vmapped["train_loss_curve"], rtol=0, atol=1e-10)


def test_an_nn_lstm_language_model_trains_as_plain_pytorch_does_under_vmap(tmp_path):
    data = text_data()
    study = fastvar.Study(model=LSTMLanguageModel, runs=2, epochs=EPOCHS, precision="float64",
                          overrides={"batch_size": BATCH})
    rows = study.run(tmp_path / "vmap", data=data, execution=fastvar.Execution(strategy="vmap", batch_models=2),
                     progress=False).runs()
    for row in rows:
        expected = trained_by_hand(LSTMLanguageModel, data, run_seeds("all-random", row["run_index"]))
        assert abs(row["test_loss"] - expected) < 1e-10, row["run_index"]


def test_a_model_vmap_cannot_run_is_refused_under_vmap_and_trains_in_the_loop(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, VOCAB, (40, T))
    data = Dataset.from_arrays(x[:32], x[:32, -1] % 4, x[32:], x[32:, -1] % 4)
    with pytest.raises(fastvar.ConfigError, match="vmap strategy.*item.*strategy='loop'"):
        fastvar.Study(model=ItemReader, runs=2).run(tmp_path / "vmap", data=data,
                                                    execution=fastvar.Execution(strategy="vmap"))
    assert not (tmp_path / "vmap").exists()
    fastvar.Study(model=ItemReader, runs=1, epochs=1).run(tmp_path / "loop", data=data,
                                                         execution=fastvar.Execution(strategy="loop"), progress=False)


def test_token_arrays_are_checked_one_line_each():
    x = np.arange(24).reshape(4, 6) % 5
    bad = {
        "outside the vocabulary": dict(x_train=x, y_train=x, x_test=x, y_test=x, vocab_size=4),
        "negative|outside": dict(x_train=-x - 1, y_train=x, x_test=x, y_test=x),
        "integer labels or 4×6 target tokens": dict(x_train=x, y_train=x[:, :3], x_test=x, y_test=x),
        "no target": dict(x_train=x, y_train=np.full_like(x, IGNORE), x_test=x, y_test=x),
        "-100 where ignored": dict(x_train=x, y_train=x - 2, x_test=x, y_test=x),
        "labels for both": dict(x_train=x, y_train=x, x_test=x, y_test=x[:, 0]),
        "float": dict(x_train=x, y_train=x.astype(np.float32), x_test=x, y_test=x),
    }
    for message, arrays in bad.items():
        with pytest.raises(DataError, match=message) as caught:
            Dataset.from_arrays(**arrays)
        assert "\n" not in str(caught.value)
    data = Dataset.from_arrays(x, x, x, x, vocab_size=9)
    assert data.num_classes == data.vocabulary == 9 and data.token_targets and data.example_shape == (6,)
    assert data.name != Dataset.from_arrays(x, x, x, x).name  # the vocabulary is part of the data


def test_the_command_line_trains_and_analyses_a_language_model_on_an_npz(tmp_path, capsys):
    data = text_data()
    npz = tmp_path / "text.npz"
    np.savez(npz, x_train=data.x_train.numpy(), y_train=data.y_train.numpy(), x_test=data.x_test.numpy(),
             y_test=data.y_test.numpy())
    out = tmp_path / "lm"
    model = f"{__name__}:TinyCausalTransformer"
    assert cli.main(["--data", str(npz), "--model", model, "--runs", "3", "--epochs", str(EPOCHS), "--batch-size",
                     str(BATCH), "--precision", "float64", "--out", str(out)]) == 0
    assert f"{EPOCHS} epochs of 40 sequences" in capsys.readouterr().err  # the start line
    for row in Store(out).runs():  # as plain PyTorch trains it from the stored seeds
        expected = trained_by_hand(TinyCausalTransformer, data, run_seeds("all-random", row["run_index"]))
        assert abs(row["test_loss"] - expected) < 1e-10
    assert cli.main(["analyze", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Language models: per-token perplexity" in printed and f"| {out} | 3 | {12 * (T - 1)} |" in printed
    assert Store(out).labels().shape == (12, T)


def test_token_metrics_equal_numpy_written_out():
    rng = np.random.default_rng(3)
    runs, tokens, vocab = 5, 200, 7
    logprob = np.log(rng.uniform(0.05, 0.9, (runs, tokens)))
    predictions, targets = rng.integers(0, vocab, (runs, tokens)), rng.integers(0, vocab, tokens)
    loss = -logprob.mean(1)
    acc = (predictions == targets).mean(1)
    m = summarize_tokens(acc, loss, logprob, predictions, targets, vocab)
    assert m["ppl_mean"] == pytest.approx(np.exp(loss).mean()) and m["ppl_sd"] == pytest.approx(np.exp(loss).std(ddof=1))
    pairs = list(combinations(range(runs), 2))
    assert m["disagreement"] == pytest.approx(np.mean([(predictions[a] != predictions[b]).mean() for a, b in pairs]))
    pair_ce = [-np.log((np.exp(logprob[a]) + np.exp(logprob[b])) / 2).mean() for a, b in pairs]
    assert m["ensemble_gain_ce"] == pytest.approx(np.mean([(loss[a] + loss[b]) / 2 - ce
                                                           for (a, b), ce in zip(pairs, pair_ce)]))
    assert m["ensemble_gain_ppl"] == pytest.approx(np.mean([(np.exp(loss[a]) + np.exp(loss[b])) / 2 - np.exp(ce)
                                                            for (a, b), ce in zip(pairs, pair_ce)]))
    assert m["ensemble_ppl"] == pytest.approx(np.exp(-np.log(np.exp(logprob).mean(0)).mean()))
    assert m["ensemble_gain_ce"] > 0 and m["tokens"] == tokens


def test_the_readme_sequence_example_runs_as_written(tmp_path, monkeypatch, capsys):
    import re
    from conftest import random_dataset, ROOT
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- sequence-example -->\s*```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    rows = Store(tmp_path / "results" / "tiny-lm").runs()
    assert len(rows) == 4 and rows[0]["test_token_argmax"].shape == (4, 32)
    assert float(capsys.readouterr().out.strip().splitlines()[-1]) > 0


def test_the_built_in_character_study_is_small_on_disk_and_keeps_to_text(tmp_path):
    data = fastvar.load_dataset("pydoc-chars", train_subset=64, test_subset=100)
    assert data.num_classes == 97 and data.x_test.shape == (100, 64)
    for model in ("char-transformer", "char-gru"):
        store = fastvar.Study(recipe="char", model=model, runs=2, epochs=1, width=16).run(
            tmp_path / model, data=data, progress=False)
        row = store.runs()[0]
        size = sum(len(v.tobytes()) if isinstance(v, np.ndarray) else len(str(v)) for v in row.values())
        assert size < 1_000_000 * 100 / 726 and math.isfinite(row["test_loss"])  # < 1 MB at the full test set
    with pytest.raises(fastvar.ConfigError, match="reads token sequences"):
        fastvar.Study(recipe="char", runs=2).run(tmp_path / "on-images", data=text_as_images())
    with pytest.raises(fastvar.AnalysisError, match="CKA"):
        fastvar.analyze(tmp_path / "char-gru", cka=True)


def text_as_images():
    rng = np.random.default_rng(0)
    return Dataset.from_arrays(rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8), np.arange(8) % 2,
                               rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), np.arange(4) % 2)


def test_the_recipe_list_names_the_character_recipe(capsys):
    assert cli.main(["--list-recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(fastvar.RECIPES) and any(line.split()[:2] == ["char", "char-transformer"] for line in lines)
    assert len({line.index(" adam ") if " adam " in line else line.index(" sgd ") for line in lines}) == 1  # aligned


class DropoutTransformer(TinyCausalTransformer):
    """The tests' transformer with nn.Dropout after attention and in the feed-forward layer."""

    def __init__(self):
        super().__init__()
        self.ff = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Dropout(0.3), nn.Linear(32, 16))
        self.proj = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.2))


def test_every_nn_dropout_draws_from_the_runs_dropout_seed(tmp_path):
    """vary-dropout on a transformer with its own nn.Dropout: loop ≡ vmap (float64), each dropout seed
    its own run, and a run the same alone as in a batch; fixed-init, with only the order varied,
    gives every run the same dropout masks."""
    data = text_data()
    rows = {}
    for strategy in ("loop", "vmap"):
        study = fastvar.Study(experiment="vary-dropout", model=DropoutTransformer, runs=3, epochs=EPOCHS,
                              precision="float64", overrides={"batch_size": BATCH})
        execution = fastvar.Execution(batch_models=3, strategy=strategy)
        rows[strategy] = study.run(tmp_path / strategy, data=data, execution=execution, progress=False).runs()
    for a, b in zip(rows["loop"], rows["vmap"]):
        assert abs(a["test_loss"] - b["test_loss"]) < 1e-10 and a["dropout_seed"] == b["dropout_seed"]
    assert len({r["test_loss"] for r in rows["loop"]}) == 3 and len({r["dropout_seed"] for r in rows["loop"]}) == 3
    assert len({(r["init_seed"], r["order_seed"]) for r in rows["loop"]}) == 1  # only dropout varies
    alone = fastvar.Study(experiment="vary-dropout", model=DropoutTransformer, runs=3, epochs=EPOCHS,
                          precision="float64", overrides={"batch_size": BATCH}).run(
        tmp_path / "alone", data=data, execution=fastvar.Execution(batch_models=1, strategy="loop"), progress=False)
    assert [r["test_loss"] for r in alone.runs()] == [r["test_loss"] for r in rows["loop"]]
    still = fastvar.Study(experiment="vary-order", model=DropoutTransformer, runs=2, epochs=1,
                          overrides={"batch_size": BATCH}).run(tmp_path / "order", data=data, progress=False).runs()
    assert still[0]["dropout_seed"] == still[1]["dropout_seed"]


def test_the_dropout_flag_masks_a_language_models_classifier_input_per_position(tmp_path):
    """--dropout on a sequence model: masks over positions × features before its last nn.Linear,
    drawn from the run's dropout seed; loop ≡ vmap (float64), and each dropout seed its own run."""
    data = text_data()
    rows = {}
    for strategy in ("loop", "vmap"):
        study = fastvar.Study(experiment="vary-dropout", model=TinyGRU, dropout=0.3, runs=2, epochs=1,
                              precision="float64", overrides={"batch_size": BATCH})
        rows[strategy] = study.run(tmp_path / strategy, data=data, progress=False,
                                   execution=fastvar.Execution(batch_models=2, strategy=strategy)).runs()
    assert [r["test_loss"] for r in rows["loop"]] == pytest.approx([r["test_loss"] for r in rows["vmap"]], abs=1e-10)
    assert rows["loop"][0]["test_loss"] != rows["loop"][1]["test_loss"]
