"""Dodge et al. (2020), on a transformer as Hugging Face gives it: fine-tune a pretrained encoder with a
new classification head, and ask whether the runs' spread comes from the head's initialisation or
from the data order. The model is `transformers`' own, loaded with `from_pretrained` and passed to
fastvar as it is (its forward returns a ModelOutput; fastvar reads `.logits`), its embeddings frozen,
its default dropout (hidden and attention, 0.1) on: fastvar draws every mask from the run's dropout
seed, so `vary-init` and `vary-order` change nothing else.

The task: Python's own help text (pydoc-chars) in windows of 64 characters, each labelled by how many
spaces it holds (four classes, cut at the training windows' quartiles). With no CHECKPOINT, a small
encoder is made from a config and saved with `save_pretrained` first (random weights: nothing is
downloaded); docs/experiments.md gives the lines for a real checkpoint and its tokenizer.

    python examples/fine_tune_transformer.py [OUT] [RUNS] [CHECKPOINT] [EPOCHS] [LR]

About a minute on 2 CPU cores at the defaults (8 runs per experiment, 3 epochs).
"""
import sys
from pathlib import Path

import numpy as np

import fastvar
from fastvar.text import VOCABULARY, encode

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "results/fine-tune-transformer")
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 8
CHECKPOINT = Path(sys.argv[3]) if len(sys.argv) > 3 else OUT / "checkpoint"
EXPERIMENTS = ("vary-init", "vary-order", "all-random")
EPOCHS, LR = int(sys.argv[4]) if len(sys.argv) > 4 else 3, float(sys.argv[5]) if len(sys.argv) > 5 else 3e-3


def windows_by_spaces(n=1500):
    """The first `n` pydoc-chars windows, every third one held out (the text drifts: its last tenth is
    mostly code), each labelled 0-3 by its count of spaces, cut at the training windows' quartiles."""
    windows = fastvar.load_dataset("pydoc-chars", train_subset=n).x_train.numpy()
    held_out = np.arange(n) % 3 == 2
    x, xt = windows[~held_out], windows[held_out]
    space = encode(" ")[0]
    edges = np.quantile((x == space).sum(1), [0.25, 0.5, 0.75])
    label = lambda windows: np.searchsorted(edges, (windows == space).sum(1), side="right")  # noqa: E731
    return fastvar.Dataset.from_arrays(x, label(x), xt, label(xt), vocab_size=VOCABULARY)


def pretrained_checkpoint(folder, vocabulary, length):
    """A small BERT encoder saved as a checkpoint is (here with random weights: nothing is downloaded)."""
    from transformers import BertConfig, BertModel
    if not (folder / "config.json").is_file():
        config = BertConfig(vocab_size=vocabulary, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=length)
        BertModel(config).save_pretrained(folder)
    return folder


def fine_tuned():
    """The checkpoint under a new 4-class head (drawn from the run's init seed), its embeddings frozen."""
    from transformers import BertForSequenceClassification
    model = BertForSequenceClassification.from_pretrained(CHECKPOINT, num_labels=4)
    model.bert.embeddings.requires_grad_(False)
    return model


def main():
    data = windows_by_spaces()
    pretrained_checkpoint(CHECKPOINT, data.vocabulary, data.x_train.shape[1])
    recipe = fastvar.Recipe(model=fine_tuned, epochs=EPOCHS, batch_size=32, optimizer=fastvar.Adam(lr=LR))
    for experiment in EXPERIMENTS:
        fastvar.Study(experiment=experiment, recipe=recipe, runs=RUNS).run(OUT / experiment, data=data)
    for a in fastvar.analyze(*(OUT / e for e in EXPERIMENTS)):
        m = a.metrics
        print(f"{a.folder.name:<11} {m['n']} runs: accuracy {m['acc_mean'] * 100:.2f} % ± {m['acc_sd'] * 100:.2f} pp "
              f"(± {m['acc_sd_err'] * 100:.2f}), test loss SD {m['ce_sd']:.4f}, disagreement "
              f"{m['disagreement'] * 100:.2f} %")


if __name__ == "__main__":
    main()
