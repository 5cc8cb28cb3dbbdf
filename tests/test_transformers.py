"""Conformance against a model library none of us wrote: Hugging Face `transformers` architectures built
from small configs (no weights), passed to fastvar as they are (a factory returning the model; its
ModelOutput read as its logits). Text and images, decoder and encoder, tied and untied read-outs,
BatchNorm, each with its default dropout on.

- dropout off: both strategies equal plain PyTorch rebuilt from the stored seeds (float64, 1e-10);
- dropout on (the configs' defaults, attention dropout through F.scaled_dot_product_attention
  included): the loop equals vmap (float64, 1e-10), a run alone equals it in a batch, and the
  dropout seed alone moves a run."""
import numpy as np
import pytest
import torch

import fastvar
from fastvar.data import Dataset
from fastvar.sources import run_seeds
import test_custom_models as own_models
import test_sequences as sequences
from test_custom_models import image_data
from test_sequences import BATCH, T, VOCAB, text_data

transformers = pytest.importorskip("transformers")
EPOCHS = 2


def gpt2(dropout=0.1):  # decoder, read-out tied to the token embedding
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=T, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout))


def bert_masked_lm(dropout=0.1):  # encoder, decoder tied to the embedding
    return transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=T, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout))


def llama(dropout=0.1):  # decoder, untied, grouped-query attention, rotary positions, RMSNorm
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=T, attention_dropout=dropout, bos_token_id=0,
        eos_token_id=0, pad_token_id=0))


def distilbert_classifier(dropout=0.1):  # encoder, a label a sequence
    return transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=T, num_labels=4,
        dropout=dropout, attention_dropout=dropout, seq_classif_dropout=dropout, pad_token_id=0))


def vit(dropout=0.1):  # images, patches, attention
    return transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=10, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout))


def resnet(dropout=None):  # images, BatchNorm (no dropout in this architecture)
    return transformers.ResNetForImageClassification(transformers.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=10))


def labelled_sequences():
    """Token windows with a label each (4 classes: the first token's residue)."""
    text = text_data()
    x = torch.cat([text.x_train, text.x_test]).numpy()
    y = x[:, 0] % 4
    return Dataset.from_arrays(x[:40], y[:40], x[40:], y[40:])


ARCHITECTURES = {  # name: (factory taking a dropout probability, data, whether its targets are tokens)
    "gpt2-tied": (gpt2, text_data, True),
    "bert-mlm-tied": (bert_masked_lm, text_data, True),
    "llama": (llama, text_data, True),
    "distilbert-classifier": (distilbert_classifier, labelled_sequences, False),
    "vit": (vit, lambda: image_data((8, 8, 3), 10), False),
    "resnet-batchnorm": (resnet, lambda: image_data((8, 8, 3), 10), False),
}


def named(factory, dropout):
    """A module-level-looking factory of no arguments (a study records its name)."""
    def build():
        return factory(dropout)
    build.__qualname__ = f"{factory.__name__}_{'off' if not dropout else 'on'}"
    return build


def study(factory, experiment="all-random"):
    return fastvar.Study(experiment=experiment, model=factory, runs=2, epochs=EPOCHS, precision="float64",
                         save_weights=2, overrides={"batch_size": BATCH})


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_a_transformers_model_trains_as_plain_pytorch_does(name, tmp_path):
    make, make_data, tokens = ARCHITECTURES[name]
    factory, data = named(make, 0.0), make_data()
    for strategy in ("loop", "vmap"):
        trains_as_plain_pytorch(factory, data, tokens, tmp_path / strategy, strategy)


def trains_as_plain_pytorch(factory, data, tokens, out, strategy, pad_id=None):
    """Two runs of `factory` by `strategy` into `out`, each equal to plain PyTorch from its seeds (float64):
    a language model's test loss, a classifier's kept weights."""
    rows = study(factory).run(out, data=data, execution=fastvar.Execution(batch_models=2, strategy=strategy),
                              progress=False).runs()
    for row in rows:
        seeds = run_seeds("all-random", row["run_index"])
        if tokens:
            expected = sequences.trained_by_hand(factory, data, seeds, pad_id=pad_id)
            assert abs(row["test_loss"] - expected) < 1e-10, (strategy, row["run_index"])
        else:
            kept = fastvar.weights(out, row["run_index"])
            for key, value in own_models.trained_by_hand(factory, data, seeds, pad_id=pad_id).items():
                assert torch.allclose(kept[key].double(), value.double(), rtol=0, atol=1e-10), (strategy, key)
    return rows


@pytest.mark.parametrize("name", [n for n in ARCHITECTURES if n != "resnet-batchnorm"])
def test_a_transformers_models_default_dropout_is_seeded(name, tmp_path):
    make, make_data, _ = ARCHITECTURES[name]
    factory, data = named(make, 0.1), make_data()
    rows = {}
    for label, strategy, m in (("loop", "loop", 2), ("vmap", "vmap", 2), ("alone", "loop", 1)):
        rows[label] = study(factory, "vary-dropout").run(
            tmp_path / label, data=data, execution=fastvar.Execution(batch_models=m, strategy=strategy),
            progress=False).runs()
    assert [r["test_loss"] for r in rows["vmap"]] == pytest.approx([r["test_loss"] for r in rows["loop"]], abs=1e-10)
    assert [r["train_loss_curve"] for r in rows["alone"]] == [r["train_loss_curve"] for r in rows["loop"]]
    assert rows["loop"][0]["train_loss_curve"] != rows["loop"][1]["train_loss_curve"]
    assert rows["loop"][0]["init_seed"] == rows["loop"][1]["init_seed"] and rows["loop"][0]["dropout_seed"] is not None
    assert np.isfinite([r["test_loss"] for r in rows["loop"]]).all()


def padded_sequences(labelled):
    """Token windows cut to random lengths and padded at the end with token 0 (pad_id=0): a label each,
    or next-token targets (a padded position, and a padding target, count for nothing)."""
    text = text_data()
    x = torch.cat([text.x_train, text.x_test]).numpy() % (VOCAB - 1) + 1  # 0 is the padding
    lengths = np.random.default_rng(3).integers(4, T + 1, len(x))
    x = np.where(np.arange(T) < lengths[:, None], x, 0)
    y = x[:, 0] % 4 if labelled else np.roll(x, -1, axis=1)
    return Dataset.from_arrays(x[:40], y[:40], x[40:], y[40:], pad_id=0)


@pytest.mark.parametrize("name", ["distilbert-classifier", "bert-mlm-tied"])
def test_padded_tokens_reach_the_model_as_its_attention_mask(name, tmp_path):
    """With pad_id, a forward that takes attention_mask gets (tokens != pad_id), as a user passes it,
    and padded positions are no target: the loop equals plain PyTorch given the mask (float64). Under
    vmap, transformers' mask code asks on the host whether any position is padded, which vmap cannot
    batch: one line, naming the loop strategy."""
    make, _, tokens = ARCHITECTURES[name]
    factory, data = named(make, 0.0), padded_sequences(labelled=not tokens)
    if tokens:
        assert ((data.y_train == -100) == ((data.x_train == 0) | (torch.roll(data.x_train, -1, 1) == 0))).all()
    with pytest.raises(fastvar.ConfigError, match="cannot be trained as replicas .vmap strategy.*data-dependent "
                                                  "control flow.*strategy='loop'") as caught:
        study(factory).run(tmp_path / "vmap", data=data, execution=fastvar.Execution(strategy="vmap"))
    assert "\n" not in str(caught.value) and not (tmp_path / "vmap").exists()
    rows = trains_as_plain_pytorch(factory, data, tokens, tmp_path / "loop", "loop", pad_id=0)
    if tokens:  # the mask matters: without it, another loss
        seeds = run_seeds("all-random", rows[0]["run_index"])
        assert abs(rows[0]["test_loss"] - sequences.trained_by_hand(factory, data, seeds)) > 1e-6


def test_the_fine_tuning_example_trains_a_from_pretrained_encoder_partly_frozen(tmp_path, monkeypatch, capsys):
    """examples/fine_tune_transformer.py at 2 runs and 1 epoch: its three experiments, each varying what
    it names; the factory's encoder is the saved checkpoint's, bit for bit, and its frozen embeddings
    stay so after training."""
    import runpy
    from conftest import ROOT
    out = tmp_path / "ft"
    monkeypatch.setattr("sys.argv", ["fine_tune_transformer.py", str(out), "2", str(tmp_path / "ckpt"), "1"])
    example = runpy.run_path(str(ROOT / "examples" / "fine_tune_transformer.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert [line.split()[0] for line in printed.splitlines()[-3:]] == list(example["EXPERIMENTS"])
    init = fastvar.results(out / "vary-init")
    order = fastvar.results(out / "vary-order")
    assert len({r["init_seed"] for r in init}) == 2 and len({r["order_seed"] for r in init}) == 1
    assert len({r["order_seed"] for r in order}) == 2 and len({r["init_seed"] for r in order}) == 1
    checkpoint = transformers.BertModel.from_pretrained(tmp_path / "ckpt").state_dict()
    built = example["fine_tuned"]().state_dict()
    assert all(torch.equal(built[f"bert.{k}"], v) for k, v in checkpoint.items() if f"bert.{k}" in built)
    study = fastvar.Study(experiment="vary-order", model=example["fine_tuned"], runs=1, epochs=1, save_weights=1,
                          overrides={"batch_size": 64})
    data = example["windows_by_spaces"](300)
    study.run(tmp_path / "kept", data=data, progress=False)
    kept = fastvar.weights(tmp_path / "kept", 0)
    frozen = [k for k in checkpoint if k.startswith("embeddings.")]
    assert frozen and all(torch.equal(kept[f"bert.{k}"], checkpoint[k]) for k in frozen)
    assert not torch.equal(kept["bert.encoder.layer.0.attention.self.query.weight"],
                           checkpoint["encoder.layer.0.attention.self.query.weight"])
