"""Data for `limits.training`: fixed image tasks as token batches (m, s, D), and an unlimited synthetic teacher task.

Images become tokens as BCP24 does for CIFAR: non-overlapping p×p patches, each flattened to D = p²·C numbers, in
row-major order over the s = (H/p)(W/p) patch positions. Pixels are standardised by one global mean and std, so
that a token's entries have unit variance on average and the read-in's token covariance G_ij = t_i·t_j/D is O(1).
Random streams: numpy's come from `numpy.random.SeedSequence(seed)`, JAX's from keys derived from the integer seed.
"""
from __future__ import annotations

import functools
import math
import numbers
import os
import zipfile
from dataclasses import dataclass, fields
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from netsor import ProgramError

TASKS = ("classification", "regression")
MAX_SEED = 1 << 32  # jax.random.key silently wraps larger seeds, and sklearn's random_state refuses them
TEACHER_NORMALISER_DRAWS = 1 << 14
TEST_STREAM = 0x7E57  # folded into the seed's key: held-out draws never coincide with a training stream
CHUNK = 1 << 10  # examples per chunk when a pass over a large array would otherwise copy it whole in float64


# ---- argument checks: one clean line naming the argument

def _positive_int(where: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ProgramError(f"{where}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _seed(where: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < MAX_SEED:
        raise ProgramError(f"{where}: seed must be an integer in [0, 2**32), got {value!r}")
    return int(value)


def _fraction(where: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ProgramError(f"{where}: {name} must be a number in (0, 1), got {value!r}")
    return float(value)


def _split_sizes(where: str, m: int, test_fraction: float) -> tuple[int, int]:
    test = int(round(test_fraction * m))
    if not 1 <= test <= m - 1:
        raise ProgramError(f"{where}: test_fraction {test_fraction:g} of {m} examples leaves an empty train or "
                           f"test set")
    return m - test, test


# ---- the dataset

@dataclass(frozen=True, eq=False, repr=False)  # eq/hash by identity: field-wise == on arrays is ambiguous
class Dataset:
    """A fixed supervised task: train/test tokens (m, s, D) float32 and labels."""

    name: str
    train_x: np.ndarray  # (m_train, s, D) float32
    train_y: np.ndarray  # (m_train,) int32 class labels, or (m_train, outputs) float32 regression targets
    test_x: np.ndarray
    test_y: np.ndarray
    task: str  # "classification" or "regression"
    outputs: int  # number of classes, or of regression targets

    def __post_init__(self):
        where = f"Dataset {self.name!r}"
        if self.task not in TASKS:
            raise ProgramError(f"{where}: task must be one of {', '.join(TASKS)}, got {self.task!r}")
        _positive_int(where, "outputs", self.outputs)
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if not isinstance(x, np.ndarray) or x.ndim != 3 or x.dtype != np.float32 or x.shape[0] == 0:
                raise ProgramError(f"{where}: {split}_x must be a non-empty (m, s, D) float32 array, got "
                                   f"{getattr(x, 'shape', type(x).__name__)} {getattr(x, 'dtype', '')}".rstrip())
            if self.task == "classification":
                expected, dtype = (x.shape[0],), np.int32
            else:
                expected, dtype = (x.shape[0], self.outputs), np.float32
            if not isinstance(y, np.ndarray) or y.shape != expected or y.dtype != dtype:
                raise ProgramError(f"{where}: {split}_y must be a {expected} {np.dtype(dtype).name} array, got "
                                   f"{getattr(y, 'shape', type(y).__name__)} {getattr(y, 'dtype', '')}".rstrip())
            if self.task == "classification" and (y.min() < 0 or y.max() >= self.outputs):
                raise ProgramError(f"{where}: {split}_y labels must lie in [0, {self.outputs})")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ProgramError(f"{where}: train tokens {self.train_x.shape[1:]} and test tokens "
                               f"{self.test_x.shape[1:]} differ in (s, D)")

    @property
    def seq_len(self) -> int:
        return self.train_x.shape[1]

    @property
    def token_dim(self) -> int:
        return self.train_x.shape[2]

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, {self.task}, outputs={self.outputs}, train={len(self.train_x)}, "
                f"test={len(self.test_x)}, seq_len={self.seq_len}, token_dim={self.token_dim})")


# ---- images to tokens

def patchify(images, patch: int) -> np.ndarray:
    """(m, H, W) or (m, H, W, C) images → (m, (H/p)(W/p), p·p·C) non-overlapping p×p patches, row-major over patch
    positions, each patch flattened row-major (pixels, then channels). ProgramError if p does not divide H and W."""
    patch = _positive_int("patchify", "patch", patch)
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ProgramError(f"patchify: images must be (m, H, W) or (m, H, W, C), got shape {images.shape}")
    m, H, W = images.shape[:3]
    C = images.shape[3] if images.ndim == 4 else 1
    if H % patch or W % patch:
        raise ProgramError(f"patchify: patch {patch} does not divide the {H}×{W} images")
    blocks = images.reshape(m, H // patch, patch, W // patch, patch, C)
    # (m, row block, col block, pixel row, pixel col, channel): then each patch is contiguous in row-major order
    return blocks.transpose(0, 1, 3, 2, 4, 5).reshape(m, (H // patch) * (W // patch), patch * patch * C)


def _moments(images: np.ndarray) -> tuple[float, float]:
    """Global (mean, std) of all pixels, in float64 a chunk at a time; two passes, so no cancellation."""
    chunks = [slice(start, start + CHUNK) for start in range(0, len(images), CHUNK)]
    mean = sum(images[chunk].sum(dtype=np.float64) for chunk in chunks) / images.size
    square = sum(np.square(images[chunk].astype(np.float64) - mean).sum() for chunk in chunks)
    return float(mean), math.sqrt(square / images.size)


def _tokens(images: np.ndarray, patch: int, mean: float, std: float) -> np.ndarray:
    """(images − mean)/std as float32 patches, a chunk at a time (uint8 CIFAR parts would be 8× larger in float64)."""
    m = len(images)
    H, W = images.shape[1:3]
    C = images.shape[3] if images.ndim == 4 else 1
    out = np.empty((m, (H // patch) * (W // patch), patch * patch * C), np.float32)
    for start in range(0, m, CHUNK):
        chunk = (images[start:start + CHUNK].astype(np.float64) - mean) / std
        out[start:start + CHUNK] = patchify(chunk, patch)
    return out


def digits(patch: int = 2, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8×8 handwritten digits (offline, 1797 images, 10 classes) as (64/p²) patches of p² pixels,
    standardised by the training set's global pixel mean and std; a seeded stratified train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    patch = _positive_int("digits", "patch", patch)
    test_fraction = _fraction("digits", "test_fraction", test_fraction)
    seed = _seed("digits", seed)
    if 8 % patch:
        raise ProgramError(f"digits: patch must divide 8 (1, 2, 4 or 8), got {patch}")
    raw = load_digits()
    images, labels = raw.images, raw.target.astype(np.int32)
    stream = np.random.RandomState(np.random.MT19937(np.random.SeedSequence(seed)))
    try:
        train, test = train_test_split(np.arange(len(labels)), test_size=test_fraction, random_state=stream,
                                       stratify=labels)
    except ValueError:  # a split too small to hold every class
        raise ProgramError(f"digits: test_fraction {test_fraction:g} leaves fewer than 10 examples (one per class) "
                           f"in the train or test set") from None
    mean, std = _moments(images[train])
    return Dataset(name=f"digits-p{patch}", train_x=_tokens(images[train], patch, mean, std), train_y=labels[train],
                   test_x=_tokens(images[test], patch, mean, std), test_y=labels[test], task="classification",
                   outputs=10)


# ---- user-supplied images (CIFAR-5M layout)

def _npz_keys(where: str, files: list[str], x_key, y_key) -> tuple[str, str]:
    for name, key in (("x_key", x_key), ("y_key", y_key)):
        if key is not None and not isinstance(key, str):
            raise ProgramError(f"{where}: {name} must be a string or None, got {key!r}")
        if key is not None and key not in files:
            raise ProgramError(f"{where}: no array {key!r} ({name}); the file holds {', '.join(files) or 'nothing'}")
    if x_key is None or y_key is None:
        defaults = next((pair for pair in (("X", "Y"), ("x", "y")) if set(pair) <= set(files)), tuple(files[:2]))
        if len(defaults) < 2:
            raise ProgramError(f"{where}: needs an images array and a labels array; the file holds "
                               f"{', '.join(files) or 'nothing'}")
        x_key = defaults[0] if x_key is None else x_key
        y_key = defaults[1] if y_key is None else y_key
    if x_key == y_key:
        raise ProgramError(f"{where}: x_key and y_key both name {x_key!r}")
    return x_key, y_key


def _npz_arrays(path, x_key, y_key) -> tuple[str, np.ndarray, str, np.ndarray]:
    """(x_key, images, y_key, labels) from an .npz, reading only those two arrays; ProgramError naming the path."""
    where = f"load_npz: {os.fspath(path)!s}"
    if not os.path.isfile(path):
        raise ProgramError(f"{where}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ProgramError(f"{where}: not an .npz archive (a lone {type(archive).__name__})")
        with archive:
            x_key, y_key = _npz_keys(where, list(archive.files), x_key, y_key)
            return x_key, archive[x_key], y_key, archive[y_key]
    except ProgramError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        reason = f"{type(error).__name__}: {error}".replace("\n", " ")
        raise ProgramError(f"{where}: unreadable ({reason})") from None


def load_npz(path, patch: int = 4, x_key: str | None = None, y_key: str | None = None, test_fraction: float = 0.1,
             seed: int = 0, max_examples: int | None = None) -> Dataset:
    """User-supplied image arrays in the CIFAR-5M layout: an .npz with images (m, H, W[, C]) (uint8 or float) and
    integer labels (m,); keys default to 'X'/'Y' or 'x'/'y' or the file's first two arrays. Standardised by the
    global mean/std as BCP24's script does; ProgramError naming the path when the file is missing, unreadable,
    lacks the keys, or holds arrays of the wrong shape (labels not integers, counts disagreeing, etc.).

    max_examples keeps the file's first examples; the split is a seeded permutation (not stratified: a small
    subset may miss a class). The mean/std are those of all kept images, train and test, as in BCP24."""
    if not isinstance(path, (str, os.PathLike)):
        raise ProgramError(f"load_npz: path must be a str or os.PathLike, got {type(path).__name__}")
    where = f"load_npz: {os.fspath(path)!s}"
    patch = _positive_int("load_npz", "patch", patch)
    test_fraction = _fraction("load_npz", "test_fraction", test_fraction)
    seed = _seed("load_npz", seed)
    if max_examples is not None:
        max_examples = _positive_int("load_npz", "max_examples", max_examples)
    x_key, images, y_key, labels = _npz_arrays(path, x_key, y_key)

    if images.ndim not in (3, 4) or images.dtype.kind not in "uif":
        raise ProgramError(f"{where}: images {x_key!r} must be a real (m, H, W) or (m, H, W, C) array, got "
                           f"{images.shape} {images.dtype}")
    if labels.ndim != 1 or labels.dtype.kind not in "ui":
        raise ProgramError(f"{where}: labels {y_key!r} must be an integer (m,) array, got {labels.shape} "
                           f"{labels.dtype}")
    if len(images) != len(labels):
        raise ProgramError(f"{where}: {len(images)} images but {len(labels)} labels")
    if max_examples is not None:
        images, labels = images[:max_examples], labels[:max_examples]
    H, W = images.shape[1:3]
    if H % patch or W % patch:
        raise ProgramError(f"{where}: patch {patch} does not divide the {H}×{W} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= np.iinfo(np.int32).max):
        raise ProgramError(f"{where}: labels {y_key!r} must be class indices in [0, 2**31 - 1)")
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        raise ProgramError(f"{where}: images {x_key!r} hold non-finite values")
    _, m_test = _split_sizes(where, len(labels), test_fraction)

    mean, std = _moments(images)
    if not std > 0:
        raise ProgramError(f"{where}: images {x_key!r} are constant; they cannot be standardised")
    order = np.random.default_rng(np.random.SeedSequence(seed)).permutation(len(labels))
    train, test = np.sort(order[m_test:]), np.sort(order[:m_test])  # sorted: gathers read the file's order
    labels = labels.astype(np.int32)
    name = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    return Dataset(name=f"{name}-p{patch}", train_x=_tokens(images[train], patch, mean, std), train_y=labels[train],
                   test_x=_tokens(images[test], patch, mean, std), test_y=labels[test], task="classification",
                   outputs=int(labels.max()) + 1)


# ---- the synthetic teacher

def _teacher_numpy(weights: dict, x: np.ndarray) -> np.ndarray:
    """The unnormalised teacher w·(1/s)Σ_i Σ_j softmax_j(q_i·k_j/sqrt(d)) v_j for x (b, s, D), in float64."""
    x = x.astype(np.float64)
    q, k, v = (x @ weights[name].astype(np.float64).T for name in ("query", "key", "value"))
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
    scores -= scores.max(axis=-1, keepdims=True)
    attention = np.exp(scores)
    attention /= attention.sum(axis=-1, keepdims=True)
    return (attention @ v).mean(axis=1) @ weights["readout"].astype(np.float64)


@dataclass(frozen=True)
class TeacherTask:
    """A synthetic sequence task with unlimited samples: tokens x_1..x_s iid N(0, I_D), target y = a fixed random
    one-head softmax-attention teacher, y = w·(1/s)Σ_i Σ_j softmax_j(q_i·k_j/sqrt(d)) v_j, standardised to unit variance
    over the input law (the normalising constant estimated once from 2^14 draws with the teacher's seed).

    q = W_Q x, k = W_K x, v = W_V x with W (d×D) of N(0, 1/D) entries and w of N(0, 1/d): scores are O(1), so the
    softmax neither saturates nor flattens. Fields are plain numbers (pickles small; dask ships it); the weights are
    rebuilt from the seed on first use."""

    seq_len: int = 8
    token_dim: int = 8
    teacher_dim: int = 8
    seed: int = 0
    name: str = "teacher"
    task: ClassVar[str] = "regression"
    outputs: ClassVar[int] = 1

    def __post_init__(self):
        for name in ("seq_len", "token_dim", "teacher_dim"):
            object.__setattr__(self, name, _positive_int("TeacherTask", name, getattr(self, name)))
        object.__setattr__(self, "seed", _seed("TeacherTask", self.seed))
        if not isinstance(self.name, str):
            raise ProgramError(f"TeacherTask: name must be a string, got {self.name!r}")

    def __getstate__(self):
        # only the fields: the cached weights are rebuilt from the seed
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @functools.cached_property
    def _streams(self) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
        weights, normaliser = np.random.SeedSequence(self.seed).spawn(2)
        return weights, normaliser

    @functools.cached_property
    def weights(self) -> dict:
        """The teacher's float32 weights: query, key, value (d, D) and readout (d,), read-only."""
        rng = np.random.default_rng(self._streams[0])
        d, D = self.teacher_dim, self.token_dim
        weights = {name: (rng.standard_normal((d, D)) / math.sqrt(D)).astype(np.float32)
                   for name in ("query", "key", "value")}
        weights["readout"] = (rng.standard_normal(d) / math.sqrt(d)).astype(np.float32)
        for array in weights.values():
            array.setflags(write=False)
        return weights

    @functools.cached_property
    def scale(self) -> float:
        """The teacher's RMS over N(0, I) tokens from 2^14 draws (its mean is 0: y(−x) = −y(x)); y is divided by it."""
        rng = np.random.default_rng(self._streams[1])
        total = 0.0
        for start in range(0, TEACHER_NORMALISER_DRAWS, CHUNK):
            count = min(CHUNK, TEACHER_NORMALISER_DRAWS - start)
            total += np.square(_teacher_numpy(self.weights, rng.standard_normal((count, self.seq_len,
                                                                                 self.token_dim)))).sum()
        return math.sqrt(total / TEACHER_NORMALISER_DRAWS)

    def sample(self, key, size: int):
        """(x (size, s, D) float32, y (size, 1) float32) from a JAX PRNG key; pure JAX (jit/vmap/scan with key)."""
        size = _positive_int("TeacherTask.sample", "size", size)
        w = self.weights  # numpy constants: staged into the trace, never cached as tracers
        x = jax.random.normal(key, (size, self.seq_len, self.token_dim), jnp.float32)
        q, k, v = (jnp.einsum("bsD,dD->bsd", x, w[name]) for name in ("query", "key", "value"))
        scores = jnp.einsum("bid,bjd->bij", q, k) / math.sqrt(self.teacher_dim)
        pooled = jnp.einsum("bij,bjd->bd", jax.nn.softmax(scores, axis=-1), v) / self.seq_len
        y = pooled @ w["readout"] / np.float32(self.scale)
        return x, y[:, None].astype(jnp.float32)

    def test_set(self, size: int = 2048) -> tuple[np.ndarray, np.ndarray]:
        """Fixed held-out draws (x, y) as numpy, from fold_in(key(seed), TEST_STREAM)."""
        size = _positive_int("TeacherTask.test_set", "size", size)
        x, y = self.sample(jax.random.fold_in(jax.random.key(self.seed), TEST_STREAM), size)
        return np.asarray(x), np.asarray(y)
