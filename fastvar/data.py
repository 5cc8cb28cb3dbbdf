"""CIFAR-10 and MNIST: find them, parse them, check them, move them to the device once as uint8 NHWC.

Accepted in the data folder, first match wins: `cifar10.npz` (x_train N×32×32×3 uint8, y_train,
x_test, y_test), the official `cifar-10-batches-py/` folder, or `cifar-10-python.tar.gz`. For MNIST,
`mnist.npz` (x_train N×28×28 uint8, ...) or the four standard idx files (gzipped or not), padded to
32×32 and repeated over three channels, so that every model and augmentation takes it as it is.
"""
import gzip
import hashlib
import io
import os
import pickle
import re
import sys
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import shift, text
from .errors import DataError, Param

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
NPZ, FOLDER, ARCHIVE = "cifar10.npz", "cifar-10-batches-py", "cifar-10-python.tar.gz"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
NUM_CLASSES = 10
DATASETS = {"cifar10": "CIFAR-10", "mnist": "MNIST", text.NAME: "Python's help topics, characters"}
IMAGE_DATASETS = ("cifar10", "mnist")
MNIST_NPZ = "mnist.npz"
MNIST_IDX = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


IGNORE = -100  # a target token that counts in no loss or metric, as torch's cross-entropy has it
TEST_SET = "test"  # the test set's name among a dataset's test sets (its eval sets have their own)
EVAL_SET_NAME = re.compile(r"[A-Za-z0-9_-]+")


@dataclass
class Dataset:
    """Training and test examples with their labels: uint8 images N×H×W×C, float features N×D, or
    int64 token sequences N×T, whose labels are one class per example (N) or a target token per
    position (N×T, language modelling; IGNORE where none). `eval_sets` are further test sets, each
    scored and stored beside the test set (a shifted one, another distribution)."""
    x_train: torch.Tensor  # N×H×W×C uint8, N×D floating point, or N×T int64 tokens
    y_train: torch.Tensor  # N int64 in 0 .. classes-1, or N×T int64 targets
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str = "cifar10"  # what a study's config records of its data: a dataset's name, or arrays-<digest>
    vocab_size: int | None = None  # tokens: the vocabulary (None: one past the largest token)
    eval_sets: dict = field(default_factory=dict)  # name -> (x, y), as x_test and y_test
    train_subset: int | None = None  # a built-in dataset's subsets as load_dataset took them (None: all)
    test_subset: int | None = None
    pad_id: int | None = None  # tokens: the padding token (a model that takes attention_mask gets it)

    @classmethod
    def from_arrays(cls, x_train, y_train, x_test, y_test, vocab_size=None, eval_sets=None, pad_id=None):
        """A dataset of the user's own (numpy or torch arrays), checked: uint8 images N×H×W×C of any
        size and channel count, floating-point features N×D, or integer tokens N×T (below `vocab_size`
        where given); integer labels from 0, any number of classes, or for tokens N×T target tokens
        (IGNORE, -100, where a position has none). `eval_sets`: {name: (x, y)}, further test sets of
        the test set's kind, each run is scored on too. `pad_id`: the token that pads token sequences,
        where a model that takes `attention_mask` gets (tokens != pad_id) and no padded position (nor a
        padding target) counts in the loss or the metrics. Its name is a digest of the arrays (and
        pad_id), so a folder trained on other data refuses it."""
        given = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
        for set_name, pair in (eval_sets or {}).items():
            check_eval_set(set_name, pair)
            given[f"x_eval_{set_name}"], given[f"y_eval_{set_name}"] = pair
        arrays = {k: torch.as_tensor(np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v).cpu()
                  for k, v in given.items()}
        check_user_arrays(arrays, vocab_size)
        tokens = is_tokens(arrays["x_train"])
        arrays = {k: v.long() if k.startswith("y") or tokens else v.contiguous() for k, v in arrays.items()}
        digest = hashlib.sha256()
        extra = [f"{xy}_eval_{n}" for n in sorted(eval_sets or {}) for xy in "xy"]  # none: the older digest
        for key in ("x_train", "y_train", "x_test", "y_test", *extra):
            digest.update(f"{key}{tuple(arrays[key].shape)}{arrays[key].dtype}".encode())
            digest.update(arrays[key].numpy().tobytes())
        if vocab_size is not None:
            digest.update(f"vocab_size{vocab_size}".encode())
        if pad_id is not None:
            arrays = padded(arrays, pad_id, tokens)
            digest.update(f"pad_id{pad_id}".encode())
        sets = {n: (arrays.pop(f"x_eval_{n}"), arrays.pop(f"y_eval_{n}")) for n in (eval_sets or {})}
        return cls(**arrays, name=f"arrays-{digest.hexdigest()[:16]}", vocab_size=vocab_size, eval_sets=sets,
                   pad_id=pad_id)

    @property
    def kind(self):
        """images, features or tokens."""
        return "images" if self.x_train.dtype == torch.uint8 else "features" if self.x_train.is_floating_point() \
            else "tokens"

    @property
    def token_targets(self):
        """Whether each position has a target token (a language model's data), not each example a label."""
        return self.y_train.dim() == 2

    @property
    def vocabulary(self):
        """Tokens: how many there are (the given vocabulary, else one past the largest token)."""
        tokens = [self.x_train, self.x_test] + [self.y_train, self.y_test] * self.token_targets
        for x, y in self.eval_sets.values():
            tokens += [x] + [y] * self.token_targets
        return self.vocab_size or int(max(t.max() for t in tokens)) + 1

    @property
    def num_classes(self):
        """CIFAR-10's and MNIST's 10 (a subset may lack some); a language model's, its vocabulary; a
        user's labels, one past the largest."""
        if self.token_targets:
            return self.vocabulary
        return NUM_CLASSES if self.name in IMAGE_DATASETS else int(max(self.y_train.max(), self.y_test.max())) + 1

    @property
    def example_shape(self):
        """One example as a model takes it: (C, H, W) for images, (D,) for features, (T,) for tokens."""
        shape = tuple(self.x_train.shape[1:])
        return (shape[2], shape[0], shape[1]) if self.kind == "images" else shape

    def targets(self, split="train"):
        """How many targets a split holds: its examples, or its target tokens."""
        y = self.y_train if split == "train" else self.y_test
        return int((y != IGNORE).sum()) if self.token_targets else len(y)

    def test_sets(self):
        """Every test set by name: the test set (TEST_SET) first, then the eval sets."""
        return {TEST_SET: (self.x_test, self.y_test), **self.eval_sets}

    def with_shift(self):
        """This dataset with the built-in shifted test set (fastvar.shift) among its eval sets."""
        if self.kind != "images":
            raise DataError(f"{{}} corrupts images; these data are {self.kind}", Param("eval_shift", True, flag="--eval-shift"))
        if shift.NAME in self.eval_sets:
            raise DataError(f"an eval set is named {shift.NAME!r} already; {{}} adds one of that name: rename yours",
                            Param("eval_shift", True, flag="--eval-shift"))
        images = torch.from_numpy(shift.shifted(self.x_test.cpu().numpy()))
        return replace(self, eval_sets={**self.eval_sets, shift.NAME: (images.to(self.x_test.device), self.y_test)})

    def __repr__(self):
        kind = {"images": "uint8 images {}×{}×{}", "features": "features of {}",
                "tokens": "sequences of {} tokens"}[self.kind].format(*self.x_train.shape[1:])
        classes = f"a vocabulary of {self.num_classes}" if self.token_targets else f"{self.num_classes} classes"
        sets = "".join(f", eval set {n!r} of {len(y):,}" for n, (_, y) in self.eval_sets.items())
        return (f"Dataset({self.name}: {len(self.y_train):,} training and {len(self.y_test):,} test examples{sets}, "
                f"{kind}, {classes})")

    def to(self, device):
        return replace(self, **{k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_test", "y_test")},
                       eval_sets={n: (x.to(device), y.to(device)) for n, (x, y) in self.eval_sets.items()})


def check_eval_set(name, pair):
    """An eval set's name (what its npz keys and the command line spell) and its (x, y) pair."""
    if not (isinstance(name, str) and EVAL_SET_NAME.fullmatch(name)) or name == TEST_SET:
        raise DataError(f"eval set name {name!r}: use letters, digits, _ and -, and not {TEST_SET!r} (the test "
                        f"set's own)")
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise DataError(f"eval set {name!r} must be a pair (x, y), as x_test and y_test are")


def is_tokens(x):
    return x.dim() == 2 and not x.is_floating_point() and x.dtype != torch.bool


def check_user_arrays(arrays, vocab_size=None):
    """One line for the first thing wrong with a user's arrays: x_train, y_train, x_test, y_test and
    any eval sets' x_eval_NAME, y_eval_NAME."""
    tested = ["test"] + [k[2:] for k in arrays if k.startswith("x_eval_")]
    for split in ("train", *tested):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        images, features = x.dtype == torch.uint8 and x.dim() == 4, x.is_floating_point() and x.dim() == 2
        if not (images or features or is_tokens(x)):
            raise DataError(f"x_{split} is {x.dtype} {tuple(x.shape)}; expected uint8 images N×H×W×C, "
                            f"floating-point features N×D or integer tokens N×T")
        if len(x) == 0:
            raise DataError(f"x_{split} holds no examples")
        if is_tokens(x):
            check_tokens(split, x, y, vocab_size)
            continue
        if y.dim() != 1 or len(y) != len(x) or y.is_floating_point() or y.dtype == torch.bool:
            raise DataError(f"y_{split} must be {len(x)} integer labels (one per example), not {y.dtype} {tuple(y.shape)}")
        if y.min() < 0:
            raise DataError(f"y_{split} has a negative label ({int(y.min())}); labels count from 0")
    for split in tested:
        check_same_examples(arrays, split)
        if arrays["y_train"].dim() == 2:  # target tokens: any of the vocabulary may be a test target
            continue
        unseen = sorted(set(arrays[f"y_{split}"].tolist()) - set(arrays["y_train"].tolist()))
        if unseen:
            shown = ", ".join(map(str, unseen[:5])) + (", ..." if len(unseen) > 5 else "")
            raise DataError(f"y_{split} holds {len(unseen)} label(s) no training example has ({shown}); every "
                            f"test label must be a training class")


def check_tokens(split, x, y, vocab_size):
    """Token sequences N×T below the vocabulary, with N labels or N×T target tokens (IGNORE allowed)."""
    if x.min() < 0 or vocab_size is not None and x.max() >= vocab_size:
        raise DataError(f"x_{split} holds token {int(x.min() if x.min() < 0 else x.max())}, outside the vocabulary "
                        f"0..{'' if vocab_size is None else vocab_size - 1}")
    if y.is_floating_point() or y.dtype == torch.bool or tuple(y.shape) not in ((len(x),), tuple(x.shape)):
        raise DataError(f"y_{split} must be {len(x)} integer labels or {len(x)}×{x.shape[1]} target tokens, not "
                        f"{y.dtype} {tuple(y.shape)}")
    targets = y[y != IGNORE] if y.dim() == 2 else y
    if len(targets) == 0:
        raise DataError(f"y_{split} has no target: every position is {IGNORE} (ignored)")
    if targets.min() < 0 or y.dim() == 2 and vocab_size is not None and targets.max() >= vocab_size:
        raise DataError(f"y_{split} holds {int(targets.min() if targets.min() < 0 else targets.max())}; "
                        + ("target tokens are in the vocabulary, or -100 where ignored" if y.dim() == 2
                           else "labels count from 0"))


def check_same_examples(arrays, split="test"):
    """x_{split} and y_{split} are of x_train's and y_train's kind and shape."""
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    if arrays["y_train"].dim() != y.dim():
        raise DataError(f"y_train is {tuple(arrays['y_train'].shape)} and y_{split} {tuple(y.shape)}: "
                        f"give labels for both, or target tokens for both")
    if arrays["x_train"].shape[1:] != x.shape[1:] or arrays["x_train"].dtype != x.dtype:
        raise DataError(f"x_train ({arrays['x_train'].dtype} {tuple(arrays['x_train'].shape[1:])} an example) and "
                        f"x_{split} ({x.dtype} {tuple(x.shape[1:])}) differ")
    if arrays["x_train"].dim() == 4 and arrays["x_train"].shape[3] > 4 >= arrays["x_train"].shape[1]:
        raise DataError(f"x_train is {tuple(arrays['x_train'].shape)}: images must be N×H×W×C (channels last)")


def default_data_dir():
    return Path(os.environ.get("FASTVAR_DATA") or Path.home() / ".cache" / "fastvar")


def load_dataset(name="cifar10", data_dir=None, *, download=False, train_subset=None, test_subset=None):
    """`name` (cifar10, mnist, or pydoc-chars: fastvar.text) from `data_dir` (default: $FASTVAR_DATA,
    else ~/.cache/fastvar), as CPU tensors; with `download`, the official CIFAR-10 archive is fetched
    where no CIFAR-10 is found. A subset of images is class-balanced; of text, the first windows."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if name == text.NAME:
        arrays = text.pydoc_arrays()
        for split, size in (("train", train_subset), ("test", test_subset)):
            available = len(arrays[f"x_{split}"])
            if size is not None and size > available:
                raise DataError(f"{{}} asks for {size} windows; the {split} set has {available}",
                                Param(f"{split}_subset", size))
            arrays[f"x_{split}"], arrays[f"y_{split}"] = arrays[f"x_{split}"][:size], arrays[f"y_{split}"][:size]
        return Dataset(*(torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in ("x_train", "y_train", "x_test",
                                                                                       "y_test")),
                       name=name, vocab_size=text.VOCABULARY, train_subset=train_subset, test_subset=test_subset)
    root = Path(data_dir) if data_dir else default_data_dir()
    if name == "mnist":  # fastvar fetches CIFAR-10 only
        arrays = read_mnist(root)
    else:
        if download and not any((root / f).exists() for f in (NPZ, FOLDER, ARCHIVE)):
            download_cifar10(root)
        arrays = read_arrays(root)
    check_arrays(arrays, root, name)
    x_train, y_train = balanced_subset(arrays["x_train"], arrays["y_train"], train_subset, "train")
    x_test, y_test = balanced_subset(arrays["x_test"], arrays["y_test"], test_subset, "test")
    return Dataset(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (x_train, y_train, x_test, y_test)), name=name,
                   train_subset=train_subset, test_subset=test_subset)


def padded(arrays, pad_id, tokens):
    """Token arrays whose targets at padded positions (and padding targets) are IGNORE: they count for
    nothing. Refused for data other than tokens."""
    if not tokens:
        raise DataError(f"pad_id={pad_id} marks padding in token sequences; these data are not tokens")
    out = dict(arrays)
    for key in [k for k in arrays if k.startswith("y") and arrays[k].dim() == 2]:
        x = arrays["x" + key[1:]]
        out[key] = arrays[key].masked_fill((x == pad_id) | (arrays[key] == pad_id), IGNORE)
    return out


def load_arrays(path):
    """A user's data from an npz holding x_train, y_train, x_test, y_test, optionally vocab_size, pad_id
    and eval sets as x_eval_NAME, y_eval_NAME (Dataset.from_arrays)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no file {path}; {{}} takes an npz with x_train, y_train, x_test, y_test",
                        Param("path", flag="--data"))
    arrays = read_npz(path, "write it again with numpy.savez", optional=("vocab_size", "pad_id", "x_eval_", "y_eval_"))
    vocab_size = arrays.pop("vocab_size", None)  # a language model's vocabulary, where the file gives one
    pad_id = arrays.pop("pad_id", None)
    names = sorted({k.split("_", 2)[2] for k in arrays if k.startswith(("x_eval_", "y_eval_"))})
    for name in names:
        pair = (f"x_eval_{name}", f"y_eval_{name}")  # one of them is there: the name came from it
        missing = [k for k in pair if k not in arrays]
        if missing:
            raise DataError(f"{path} holds {(set(pair) - set(missing)).pop()} but no {missing[0]}: an eval set "
                            f"needs both")
    eval_sets = {name: (arrays.pop(f"x_eval_{name}"), arrays.pop(f"y_eval_{name}")) for name in names}
    return Dataset.from_arrays(**arrays, vocab_size=None if vocab_size is None else int(vocab_size),
                               eval_sets=eval_sets, pad_id=None if pad_id is None else int(pad_id))


def read_arrays(root):
    if (root / NPZ).is_file():
        return read_npz(root / NPZ, "delete it and run again with downloading on (fastvar then fetches the "
                                    "official CIFAR-10 archive), or replace it with a good copy")
    if (root / FOLDER).is_dir():
        return read_official(lambda name: (root / FOLDER / name).read_bytes(), root / FOLDER)
    if (root / ARCHIVE).is_file():
        return read_archive(root / ARCHIVE)
    raise DataError(
        f"no CIFAR-10 in {root} (looked for {NPZ}, {FOLDER}/, {ARCHIVE}); let fastvar fetch it ({{}}), or "
        f"point {{}} / $FASTVAR_DATA at a folder holding one of them",
        Param("download", True, flag="drop --no-download"), Param("data_dir"))


def read_npz(path, remedy, optional=()):
    """The four arrays of an npz, and those it holds whose names are or start with one of `optional`;
    `remedy` says how to get a good file where this one is corrupt."""
    needed = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in needed if k not in f.files]
            if not missing:
                return {k: f[k] for k in f.files if k in needed or k.startswith(optional)}
            found = ", ".join(f.files) or "no arrays"
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # numpy's reasons name its internals
        raise DataError(f"corrupt {path}: not a readable npz of numeric arrays; {remedy}") from None
    raise DataError(f"malformed {path}: no {', '.join(missing)} (it holds {found}; it needs {', '.join(needed)})")


def read_archive(path):
    try:
        with tarfile.open(path, "r:gz") as tar:
            def read(name):
                member = tar.extractfile(f"{FOLDER}/{name}")
                if member is None:
                    raise KeyError(name)
                return member.read()
            return read_official(read, path)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"corrupt archive {path}: {e}; delete it and download it again") from None


def read_official(read, where):
    """The official python layout: five training batches and one test batch, each a pickled dict."""
    try:
        train = [unpickle_batch(read(name)) for name in TRAIN_BATCHES]
        test = unpickle_batch(read(TEST_BATCH))
    except KeyError as e:
        raise DataError(f"{where} lacks {e.args[0]}: not a complete CIFAR-10 python release") from None
    except (pickle.UnpicklingError, ValueError, TypeError, EOFError, AttributeError) as e:
        raise DataError(f"corrupt CIFAR-10 batch in {where}: {e}") from None
    return {"x_train": np.concatenate([x for x, _ in train]), "y_train": np.concatenate([y for _, y in train]),
            "x_test": test[0], "y_test": test[1]}


class BatchUnpickler(pickle.Unpickler):
    """Loads only what a CIFAR-10 batch holds (dicts, lists, bytes, numpy arrays): no code runs."""

    ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how protocol 2 spells bytes when Python 3 writes it

    def find_class(self, module, name):
        canonical = module.replace("numpy.core.", "numpy._core.")
        if (canonical, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR-10 batch")
        if hasattr(np, "_core"):
            module = canonical  # the official files predate numpy 2's rename of numpy.core
        return super().find_class(module, name)


def unpickle_batch(raw):
    batch = BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    # Rows are 3072 bytes: the red plane, then green, then blue, each 32×32 row-major.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def check_arrays(arrays, root, name="cifar10"):
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            raise DataError(f"malformed {DATASETS[name]} in {root}: x_{split} is {x.dtype} {x.shape}, "
                            f"expected uint8 N×32×32×3")
        if y.shape != (len(x),) or len(y) == 0 or y.min() < 0 or y.max() >= NUM_CLASSES:
            raise DataError(f"malformed {DATASETS[name]} in {root}: y_{split} must hold {len(x)} labels in 0..9")
    arrays["y_train"], arrays["y_test"] = arrays["y_train"].astype(np.int64), arrays["y_test"].astype(np.int64)


def balanced_subset(x, y, size, split):
    """The first size/10 examples of each class in dataset order (remainder to the lowest classes)."""
    if size is None:
        return x, y
    per_class = [size // NUM_CLASSES + (c < size % NUM_CLASSES) for c in range(NUM_CLASSES)]
    picked = []
    for c, k in enumerate(per_class):
        where = np.flatnonzero(y == c)
        if len(where) < k:
            raise DataError(f"{{}} needs {k} examples of class {c}; the {split} set has {len(where)}",
                            Param(f"{split}_subset", size))
        picked.append(where[:k])
    keep = np.sort(np.concatenate(picked))
    return x[keep], y[keep]


def read_mnist(root):
    if (root / MNIST_NPZ).is_file():
        arrays = read_npz(root / MNIST_NPZ, "replace it with a good copy")
    else:
        arrays = {key: read_idx(root, name) for key, name in MNIST_IDX.items()}
    for split in ("train", "test"):
        x = arrays[f"x_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DataError(f"malformed MNIST in {root}: x_{split} is {x.shape}, expected N×28×28")
        # Zero-pad to 32×32, the size every model here takes, and repeat over three channels.
        arrays[f"x_{split}"] = np.repeat(np.pad(x, ((0, 0), (2, 2), (2, 2)))[..., None], 3, axis=3)
    return arrays


def read_idx(root, name):
    """One idx file (the MNIST format: a magic number giving the type and rank, big-endian sizes, data)."""
    path = next((root / f for f in (name, name + ".gz") if (root / f).is_file()), None)
    if path is None:
        raise DataError(f"no MNIST in {root} (looked for {MNIST_NPZ} and the idx files, {name} missing); "
                        f"fastvar downloads CIFAR-10 only: put MNIST there")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"corrupt {path}: {e}") from None
    zero, kind, rank = raw[:2], raw[2], raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(rank))
    if zero != b"\0\0" or kind != 0x08 or len(raw) != 4 + 4 * rank + int(np.prod(shape)):
        raise DataError(f"corrupt {path}: not an idx file of unsigned bytes with the size its header gives")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(shape)


def download_cifar10(root):
    """Fetch the official archive into `root`, keeping it only if its MD5 is right; one line on stderr
    says where it goes."""
    print(f"fastvar: no CIFAR-10 in {root}; downloading {CIFAR10_URL} (163 MB, MD5-checked) into it",
          file=sys.stderr, flush=True)
    partial = root / (ARCHIVE + ".part")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(CIFAR10_URL, timeout=60) as response, open(partial, "wb") as out:
            md5 = hashlib.md5()
            while chunk := response.read(1 << 20):
                md5.update(chunk)
                out.write(chunk)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise DataError(f"could not download {CIFAR10_URL} ({getattr(e, 'reason', None) or e}); put {ARCHIVE} "
                        f"from there, or a {NPZ}, into {root}, or point {{}} at a folder that holds one",
                        Param("data_dir")) from None
    if md5.hexdigest() != CIFAR10_MD5:
        partial.unlink()
        raise DataError(f"downloaded archive has MD5 {md5.hexdigest()}, expected {CIFAR10_MD5}; nothing kept")
    partial.replace(root / ARCHIVE)
