"""limits.training.data: patches against hand-built examples, the digits and .npz loaders' splits and
standardisation, and the teacher task against an independent numpy implementation of its formula."""
import math
import pickle
import re

import jax
import numpy as np
import pytest

from limits.training.data import Dataset, TeacherTask, digits, load_npz, patchify
from netsor import ProgramError

# JAX runs float32 matmuls exactly on the CPU; on a GPU its default precision is TF32 (a 10-bit mantissa, ~1e-3
# relative per product), which the teacher's few matmuls compound to a few 1e-3 against the float64 reference
MATMUL_ATOL = 1e-5 if jax.default_backend() == "cpu" else 1e-2

DRAWS = 20000  # one sample size throughout: every eager JAX op compiles once per shape


# ---- patchify

def test_patchify_matches_a_hand_built_grey_image():
    image = np.arange(16).reshape(4, 4)
    patches = patchify(np.stack([image, -image]), 2)
    expected = np.array([[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]])
    np.testing.assert_array_equal(patches[0], expected)
    np.testing.assert_array_equal(patches[1], -expected)


def test_patchify_flattens_pixels_then_channels():
    rows, cols, channels = np.meshgrid(np.arange(4), np.arange(6), np.arange(2), indexing="ij")
    image = 100 * channels + 10 * rows + cols  # pixel (r, c) of channel ch reads "ch r c"
    patches = patchify(image[None], 2)
    assert patches.shape == (1, 6, 8)
    np.testing.assert_array_equal(patches[0, 0], [0, 100, 1, 101, 10, 110, 11, 111])
    np.testing.assert_array_equal(patches[0, 2], [4, 104, 5, 105, 14, 114, 15, 115])  # third patch of row 0
    np.testing.assert_array_equal(patches[0, 3], [20, 120, 21, 121, 30, 130, 31, 131])  # first patch of row 1


@pytest.mark.parametrize("images, patch, message", [
    (np.zeros((2, 4, 6)), 3, "patch 3 does not divide"),
    (np.zeros((2, 6, 4)), 4, "patch 4 does not divide"),
    (np.zeros((2, 4, 4)), 0, "patch must be a positive integer"),
    (np.zeros((2, 4, 4)), True, "patch must be a positive integer"),
    (np.zeros((4, 4)), 2, "images must be"),
])
def test_patchify_refuses_bad_arguments(images, patch, message):
    with pytest.raises(ProgramError, match=message):
        patchify(images, patch)


# ---- digits

@pytest.fixture(scope="module")
def digits2():
    return digits(patch=2, seed=0)


def test_digits_shapes_classes_and_stratified_split(digits2):
    data = digits2
    assert data.train_x.shape == (1437, 16, 4) and data.test_x.shape == (360, 16, 4)
    assert data.train_x.dtype == data.test_x.dtype == np.float32
    assert data.train_y.dtype == data.test_y.dtype == np.int32
    assert (data.seq_len, data.token_dim, data.outputs, data.task) == (16, 4, 10, "classification")
    train_counts, test_counts = np.bincount(data.train_y, minlength=10), np.bincount(data.test_y, minlength=10)
    assert (train_counts > 0).all() and (test_counts > 0).all() and len(train_counts) == 10
    assert np.abs(test_counts - 0.2 * (train_counts + test_counts)).max() <= 1  # stratified


def test_digits_train_set_is_standardised(digits2):
    pixels = digits2.train_x.astype(np.float64)
    assert abs(pixels.mean()) < 1e-5 and abs(pixels.std() - 1) < 1e-5
    # the test set uses the train statistics, so it is only near standard
    assert abs(digits2.test_x.mean()) < 0.1 and abs(digits2.test_x.std() - 1) < 0.1


def test_digits_patch_4_holds_the_same_pixels(digits2):
    data = digits(patch=4, seed=0)
    assert data.train_x.shape == (1437, 4, 16) and data.test_x.shape == (360, 4, 16)
    np.testing.assert_array_equal(data.train_y, digits2.train_y)
    np.testing.assert_array_equal(np.sort(data.train_x.reshape(1437, -1), axis=1),
                                  np.sort(digits2.train_x.reshape(1437, -1), axis=1))
    assert not np.array_equal(data.train_x.reshape(1437, -1), digits2.train_x.reshape(1437, -1))  # other order


def test_digits_is_deterministic_per_seed(digits2):
    again, other = digits(patch=2, seed=0), digits(patch=2, seed=1)
    np.testing.assert_array_equal(again.train_x, digits2.train_x)
    np.testing.assert_array_equal(again.test_y, digits2.test_y)
    assert other.test_x.shape == digits2.test_x.shape
    assert not np.array_equal(other.test_x, digits2.test_x)


@pytest.mark.parametrize("kwargs, message", [
    ({"patch": 3}, "patch must divide 8"),
    ({"patch": 0}, "patch must be a positive integer"),
    ({"test_fraction": 0}, "test_fraction must be a number in"),
    ({"test_fraction": 1.5}, "test_fraction must be a number in"),
    ({"test_fraction": 0.001}, "test_fraction 0.001 leaves"),
    ({"seed": -1}, "seed must be an integer"),
    ({"seed": 1.5}, "seed must be an integer"),
])
def test_digits_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ProgramError, match=message):
        digits(**kwargs)


# ---- load_npz

@pytest.fixture
def cifar_like(tmp_path):
    rng = np.random.default_rng(np.random.SeedSequence(7))
    images = rng.integers(0, 256, size=(50, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, size=50)
    labels[:5] = np.arange(5)  # every class present, so outputs is 5
    path = tmp_path / "part0.npz"
    np.savez(path, X=images, Y=labels)
    return path, images, labels


def _rows_of(tokens, expected):
    """The index in expected (m, s, D) of each example of tokens, by exact match to float32 rounding."""
    distance = np.abs(tokens.reshape(len(tokens), 1, -1) - expected.reshape(1, len(expected), -1)).max(axis=2)
    index = distance.argmin(axis=1)
    assert distance[np.arange(len(tokens)), index].max() < 1e-5
    return index


def test_load_npz_splits_standardises_and_keeps_labels_with_images(cifar_like):
    path, images, labels = cifar_like
    data = load_npz(path, patch=4, test_fraction=0.2, seed=0)
    assert data.train_x.shape == (40, 4, 48) and data.test_x.shape == (10, 4, 48)
    assert data.train_y.dtype == np.int32 and (data.outputs, data.task, data.name) == (5, "classification", "part0-p4")
    tokens = np.concatenate([data.train_x, data.test_x]).astype(np.float64)
    assert abs(tokens.mean()) < 1e-6 and abs(tokens.std() - 1) < 1e-6  # global over everything loaded, as BCP24
    pixels = images.astype(np.float64)
    expected = (patchify(pixels, 4) - pixels.mean()) / pixels.std()
    train, test = _rows_of(data.train_x, expected), _rows_of(data.test_x, expected)
    assert sorted(np.concatenate([train, test])) == list(range(50))  # a partition of the file
    np.testing.assert_array_equal(data.train_y, labels[train])
    np.testing.assert_array_equal(data.test_y, labels[test])
    other = load_npz(path, patch=4, test_fraction=0.2, seed=1)
    assert not np.array_equal(np.sort(_rows_of(other.test_x, expected)), np.sort(test))


def test_load_npz_max_examples_keeps_the_first(cifar_like):
    path, images, labels = cifar_like
    data = load_npz(path, patch=2, max_examples=20)
    assert data.train_x.shape == (18, 16, 12) and data.test_x.shape == (2, 16, 12)
    pixels = images[:20].astype(np.float64)
    expected = (patchify(pixels, 2) - pixels.mean()) / pixels.std()
    assert sorted(np.concatenate([_rows_of(data.train_x, expected), _rows_of(data.test_x, expected)])) == list(
        range(20))


def test_load_npz_key_defaults(tmp_path):
    rng = np.random.default_rng(np.random.SeedSequence(8))
    grey, labels = rng.standard_normal((30, 4, 4)), rng.integers(0, 3, 30).astype(np.int16)
    np.savez(tmp_path / "lower.npz", x=grey, y=labels)
    np.savez(tmp_path / "named.npz", images=grey, classes=labels, extra=labels)
    np.savez(tmp_path / "swapped.npz", labels=labels, pictures=grey)
    for data in (load_npz(tmp_path / "lower.npz", patch=2), load_npz(str(tmp_path / "named.npz"), patch=2),
                 load_npz(tmp_path / "swapped.npz", patch=2, x_key="pictures", y_key="labels")):
        assert data.train_x.shape == (27, 4, 4) and data.test_x.shape == (3, 4, 4) and data.outputs == 3


def _bad_files(tmp_path):
    images, labels = np.zeros((10, 4, 4), np.uint8), np.arange(10) % 2
    images[0, 0, 0] = 1  # not constant
    np.savez(tmp_path / "float_labels.npz", X=images, Y=labels.astype(np.float32))
    np.savez(tmp_path / "counts.npz", X=images, Y=labels[:9])
    np.savez(tmp_path / "flat.npz", X=images.reshape(10, 16), Y=labels)
    np.savez(tmp_path / "one.npz", X=images)
    np.savez(tmp_path / "good.npz", X=images, Y=labels)
    np.save(tmp_path / "lone.npy", images)
    (tmp_path / "garbage.npz").write_bytes(b"not a zip archive at all")
    return [
        ("missing.npz", {}, "no such file"),
        ("garbage.npz", {}, "unreadable"),
        ("lone.npy", {}, "not an .npz archive"),
        ("float_labels.npz", {}, "must be an integer"),
        ("counts.npz", {}, "10 images but 9 labels"),
        ("flat.npz", {}, "images 'X' must be"),
        ("one.npz", {}, "needs an images array and a labels array"),
        ("good.npz", {"x_key": "pixels"}, "no array 'pixels' \\(x_key\\)"),
        ("good.npz", {"x_key": "X", "y_key": "X"}, "both name 'X'"),
        ("good.npz", {"patch": 3}, "patch 3 does not divide"),
        ("good.npz", {"test_fraction": 0.01}, "leaves an empty"),
    ]


def test_load_npz_refuses_bad_files_naming_the_path(tmp_path):
    for name, kwargs, message in _bad_files(tmp_path):
        path = tmp_path / name
        with pytest.raises(ProgramError, match=message) as error:
            load_npz(path, **{"patch": 2, **kwargs})
        assert "\n" not in str(error.value) and str(path) in str(error.value), str(error.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"patch": 0}, "load_npz: patch must be a positive integer"),
    ({"max_examples": 0}, "load_npz: max_examples must be a positive integer"),
    ({"test_fraction": 1}, "load_npz: test_fraction must be a number in"),
    ({"seed": 2 ** 32}, "load_npz: seed must be an integer in"),
    ({"x_key": 3}, "x_key must be a string or None"),
])
def test_load_npz_refuses_bad_arguments(cifar_like, kwargs, message):
    with pytest.raises(ProgramError, match=message):
        load_npz(cifar_like[0], **kwargs)
    with pytest.raises(ProgramError, match="path must be a str or os.PathLike"):
        load_npz(3)


# ---- Dataset

def test_dataset_checks_its_arrays():
    x, y = np.zeros((4, 3, 2), np.float32), np.zeros((4, 2), np.float32)
    data = Dataset("r", x, y, x[:2], y[:2], "regression", 2)
    assert (data.seq_len, data.token_dim) == (3, 2) and "train=4" in repr(data)
    with pytest.raises(ProgramError, match="train_x must be"):
        Dataset("r", x.astype(np.float64), y, x, y, "regression", 2)
    with pytest.raises(ProgramError, match=re.escape("test_y must be a (2, 3) float32")):
        Dataset("r", x, np.zeros((4, 3), np.float32), x[:2], y[:2], "regression", 3)
    with pytest.raises(ProgramError, match="labels must lie in"):
        Dataset("c", x, np.full(4, 5, np.int32), x, np.zeros(4, np.int32), "classification", 5)
    with pytest.raises(ProgramError, match="task must be one of"):
        Dataset("c", x, y, x, y, "ranking", 2)


# ---- the teacher task

def reference_teacher(task, x):
    """y = w·(1/s)Σ_i Σ_j softmax_j(q_i·k_j/sqrt(d)) v_j / scale, one example and one query token at a time."""
    w = {name: array.astype(np.float64) for name, array in task.weights.items()}
    y = np.empty(len(x))
    for b, tokens in enumerate(x.astype(np.float64)):
        keys, values = tokens @ w["key"].T, tokens @ w["value"].T
        pooled = np.zeros(task.teacher_dim)
        for token in tokens:
            scores = keys @ (w["query"] @ token) / math.sqrt(task.teacher_dim)
            weights = np.exp(scores) / np.exp(scores).sum()
            pooled += weights @ values / task.seq_len
        y[b] = pooled @ w["readout"] / task.scale
    return y


@pytest.fixture(scope="module")
def teacher():
    return TeacherTask(seq_len=6, token_dim=5, teacher_dim=4, seed=3)  # unequal sizes: a transposition fails


@pytest.fixture(scope="module")
def draws(teacher):
    x, y = teacher.sample(jax.random.key(0), DRAWS)
    return np.asarray(x), np.asarray(y)


def test_teacher_sample_shapes_and_streams(teacher, draws):
    x, y = draws
    assert x.shape == (DRAWS, 6, 5) and y.shape == (DRAWS, 1) and x.dtype == y.dtype == np.float32
    assert (teacher.task, teacher.outputs) == ("regression", 1)
    again_x, again_y = teacher.sample(jax.random.key(0), DRAWS)
    np.testing.assert_array_equal(np.asarray(again_x), x)
    np.testing.assert_array_equal(np.asarray(again_y), y)
    other_x, other_y = teacher.sample(jax.random.key(1), DRAWS)
    assert not np.allclose(np.asarray(other_x), x) and not np.allclose(np.asarray(other_y), y)
    assert abs(x.mean()) < 5 / math.sqrt(x.size) and abs(x.var() - 1) < 5 * math.sqrt(2 / x.size)  # N(0, I_D)


def test_teacher_has_unit_variance(draws):
    y = draws[1][:, 0].astype(np.float64)
    # var̂ over n draws has relative sd sqrt((κ−1)/n) (κ the kurtosis, 3 if Gaussian); the normaliser ĉ² from 2^14
    # independent draws adds its own sqrt((κ−1)/2^14), so var̂/1 − 1 has sd ≈ sqrt((κ−1)(1/n + 1/2^14)) ≈ 0.015
    kurtosis = np.mean(y ** 4) / np.mean(y ** 2) ** 2
    tolerance = 5 * math.sqrt((kurtosis - 1) * (1 / len(y) + 1 / 2 ** 14))
    assert 0.05 < tolerance < 0.15
    assert abs(y.var() - 1) < tolerance, (y.var(), tolerance)
    assert abs(y.mean()) < 5 / math.sqrt(len(y))  # y(−x) = −y(x): mean zero


def test_teacher_targets_follow_the_formula(teacher, draws):
    x, y = draws
    np.testing.assert_allclose(y[:500, 0], reference_teacher(teacher, x[:500]), rtol=0, atol=MATMUL_ATOL)


def test_teacher_sample_traces_under_scan_and_vmap(teacher):
    # tracing is what jit, vmap and scan need (closure constants, no concretised key); compiling it would only cost time
    sample = lambda key: teacher.sample(key, 3)
    scan = lambda keys: jax.lax.scan(lambda carry, key: (carry, jax.vmap(sample)(jax.random.split(key, 2))), 0, keys)
    _, (x, y) = jax.eval_shape(scan, jax.random.split(jax.random.key(0), 4))
    assert (x.shape, y.shape) == ((4, 2, 3, 6, 5), (4, 2, 3, 1)) and x.dtype == y.dtype == np.float32


def test_another_seed_is_another_teacher(teacher, draws):
    other = TeacherTask(seq_len=6, token_dim=5, teacher_dim=4, seed=4)
    x, y = (np.asarray(a) for a in other.sample(jax.random.key(0), DRAWS))
    np.testing.assert_array_equal(x, draws[0])  # the inputs come from the key alone
    np.testing.assert_allclose(y[:100, 0], reference_teacher(other, x[:100]), rtol=0, atol=MATMUL_ATOL)
    assert abs(np.corrcoef(y[:, 0], draws[1][:, 0])[0, 1]) < 0.9
    assert not np.allclose(other.weights["query"], teacher.weights["query"])


def test_teacher_pickles_as_plain_numbers(teacher, draws):
    teacher.weights, teacher.scale  # cached, yet not shipped
    blob = pickle.dumps(teacher)
    assert len(blob) < 400 and b"numpy" not in blob
    copy = pickle.loads(blob)
    assert copy == teacher and hash(copy) == hash(teacher) and "weights" not in vars(copy)
    x, y = copy.sample(jax.random.key(0), DRAWS)
    np.testing.assert_array_equal(np.asarray(x), draws[0])
    np.testing.assert_array_equal(np.asarray(y), draws[1])


def test_teacher_test_set_is_fixed_and_held_out(teacher, draws):
    x, y = teacher.test_set(DRAWS)
    assert isinstance(x, np.ndarray) and x.shape == (DRAWS, 6, 5) and y.shape == (DRAWS, 1)
    np.testing.assert_array_equal(teacher.test_set(DRAWS)[1], y)
    np.testing.assert_array_equal(TeacherTask(seq_len=6, token_dim=5, teacher_dim=4, seed=3).test_set(DRAWS)[0], x)
    natural_x, _ = teacher.sample(jax.random.key(teacher.seed), DRAWS)  # the seed's own key, as training might use
    assert not np.allclose(np.asarray(natural_x), x) and not np.allclose(draws[0], x)
    np.testing.assert_allclose(y[:100, 0], reference_teacher(teacher, x[:100]), rtol=0, atol=MATMUL_ATOL)


@pytest.mark.parametrize("kwargs, message", [
    ({"seq_len": 0}, "seq_len must be a positive integer"),
    ({"token_dim": 2.5}, "token_dim must be a positive integer"),
    ({"teacher_dim": True}, "teacher_dim must be a positive integer"),
    ({"seed": -1}, "seed must be an integer in"),
    ({"seed": 2 ** 32}, "seed must be an integer in"),
    ({"name": 3}, "name must be a string"),
])
def test_teacher_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ProgramError, match=message):
        TeacherTask(**kwargs)


def test_teacher_refuses_bad_sizes(teacher):
    with pytest.raises(ProgramError, match="sample: size must be a positive integer"):
        teacher.sample(jax.random.key(0), 0)
    with pytest.raises(ProgramError, match="test_set: size must be a positive integer"):
        teacher.test_set(-1)
