"""Fine-tuning, after Dodge et al. (2020): does a fine-tuned head's accuracy move with its
initialisation, with its data order, or with both? Pretrain a ResNet-18 (width 8) on CIFAR-10's
classes 0-4, freeze it, and fine-tune a new head on classes 5-9 with `fixed-init`, `fixed-order`
and `all-random`; every run is scored on the test images and on their shifted copy (eval_shift:
noise, blur, low contrast), as Jordan compared spreads under shift. On 2 CPU cores in a few minutes.

    python examples/fine_tune.py [OUT] [RUNS]

Needs CIFAR-10 where fastvar finds it ($FASTVAR_DATA, else ~/.cache/fastvar).
"""
import sys
from pathlib import Path

import numpy as np
from torch import nn

import fastvar
from fastvar.models import ResNet18

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "results/fine-tune")
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 8
WIDTH, TRAIN_PER_CLASS, TEST_PER_CLASS = 8, 1000, 500


def classes(data, wanted, train, test):
    """The first `train`/`test` images of each class in `wanted`, relabelled 0..len(wanted)-1."""
    def pick(x, y, per_class):
        keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in wanted]))
        return x[keep], np.searchsorted(wanted, y[keep])
    x, y = pick(data.x_train.numpy(), data.y_train.numpy(), train)
    xt, yt = pick(data.x_test.numpy(), data.y_test.numpy(), test)
    return fastvar.Dataset.from_arrays(x, y, xt, yt)


def fine_tuned():
    """The pretrained network, frozen, under a new 5-class head: the run's init seed draws the head."""
    net = ResNet18(num_classes=5, width=WIDTH)
    net.load_state_dict(fastvar.weights(OUT / "pretrain", 0))
    net.requires_grad_(False)
    net.fc = nn.Linear(8 * WIDTH, 5)
    return net


def main():
    cifar = fastvar.load_dataset("cifar10")
    first, second = classes(cifar, [0, 1, 2, 3, 4], TRAIN_PER_CLASS, TEST_PER_CLASS), \
        classes(cifar, [5, 6, 7, 8, 9], TRAIN_PER_CLASS, TEST_PER_CLASS)
    pretrain = fastvar.Study(model=lambda: ResNet18(num_classes=5, width=WIDTH), runs=1, epochs=5, save_weights=1)
    pretrain.run(OUT / "pretrain", data=first)
    for experiment in ("fixed-init", "fixed-order", "all-random"):
        study = fastvar.Study(experiment=experiment, model=fine_tuned, runs=RUNS, epochs=3, eval_shift=True)
        study.run(OUT / experiment, data=second)
    for a in fastvar.analyze(*(OUT / e for e in ("fixed-init", "fixed-order", "all-random"))):
        for test_set, m in (("test", a.metrics), *a.eval_sets.items()):
            print(f"{a.folder.name:<12} {test_set:<5} {m['n']} runs: accuracy {m['acc_mean'] * 100:.2f} % "
                  f"± {m['acc_sd'] * 100:.2f} pp (± {m['acc_sd_err'] * 100:.2f}), disagreement "
                  f"{m['disagreement'] * 100:.2f} %, binomial SD {m['binomial_sd'] * 100:.2f} pp, distribution SD "
                  f"{m['distribution_sd'] * 100:.2f} pp")


if __name__ == "__main__":
    main()
