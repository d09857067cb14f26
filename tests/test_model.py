"""DoomNet: gradients, shapes and dtypes, loss values, predictions, files, bad inputs."""

import math
import subprocess
import sys

import numpy as np
import pytest

from doomnet.model import DoomNet


def numerical_grads(model: DoomNet, X: np.ndarray, y: np.ndarray, h: float = 1e-6) -> dict:
    """Central differences of the loss with respect to every parameter entry."""
    grads = {}
    for key, p in model.params.items():
        g = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + h
            plus, _ = model.loss_and_grads(X, y)
            p[i] = old - h
            minus, _ = model.loss_and_grads(X, y)
            p[i] = old
            g[i] = (plus - minus) / (2 * h)
        grads[key] = g
    return grads


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest elementwise relative error (CS231n's rel_error)."""
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


@pytest.mark.parametrize("hidden", [5, (6, 4)], ids=["1-hidden", "2-hidden"])
@pytest.mark.parametrize("l2", [0.0, 0.3], ids=["no-l2", "l2"])
def test_gradients_match_finite_differences(hidden, l2):
    rng = np.random.default_rng(1)
    model = DoomNet(4, hidden, 3, std=0.5, seed=2, dtype=np.float64, l2=l2)
    for key in model.params:  # non-zero biases so their gradients are exercised too
        if key.startswith("b"):
            model.params[key][:] = rng.normal(0, 0.3, model.params[key].shape)
    X = rng.normal(size=(7, 4))
    y = np.array([0, 1, 2, 0, 1, 2, 1])
    # Pre-activations far from the ReLU kink, so the central difference is smooth.
    Z = X @ model.params["W1"] + model.params["b1"]
    assert np.min(np.abs(Z)) > 1e-3

    loss, grads = model.loss_and_grads(X, y)
    expected = numerical_grads(model, X, y)
    assert set(grads) == set(model.params)
    for key in model.params:
        assert grads[key].shape == model.params[key].shape
        assert rel_error(grads[key], expected[key]) < 1e-6, key
    assert np.any(grads["W1"] != 0)


def test_l2_penalty_is_half_l2_sum_of_squared_weights_only():
    X = np.random.default_rng(0).normal(size=(5, 4))
    y = np.array([0, 1, 2, 0, 1])
    plain = DoomNet(4, 6, 3, std=0.5, dtype=np.float64)
    reg = DoomNet(4, 6, 3, std=0.5, dtype=np.float64, l2=0.1)
    reg.params["b1"][:] = 7.0  # biases are not penalised
    plain.params["b1"][:] = 7.0
    penalty = 0.05 * sum(np.sum(plain.params[k] ** 2) for k in ("W1", "W2"))
    assert reg.loss_and_grads(X, y)[0] == pytest.approx(plain.loss_and_grads(X, y)[0] + penalty)


def test_initial_loss_is_log_of_class_count():
    X = np.random.default_rng(0).random((200, 784), dtype=np.float32)
    y = np.arange(200) % 10
    loss, _ = DoomNet(784, 20, 10, std=1e-4).loss_and_grads(X, y)
    assert abs(loss - math.log(10)) < 1e-3


def test_small_net_overfits_32_samples():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(32, 10)).astype(np.float32)
    y = rng.integers(0, 4, size=32)
    model = DoomNet(10, 50, 4, init="he")
    for _ in range(500):
        _, grads = model.loss_and_grads(X, y)
        for key, p in model.params.items():
            p -= 0.5 * grads[key]
    assert model.accuracy(X, y) == 1.0


def test_float32_stays_float32_and_biases_stay_1d():
    rng = np.random.default_rng(0)
    X = rng.random((64, 12), dtype=np.float32)
    y = rng.integers(0, 5, size=64)
    model = DoomNet(12, (8, 6), 5, std=0.1, l2=1e-3)
    for _ in range(50):
        loss, grads, acc = model.loss_grads_acc(X, y)
        for key, p in model.params.items():
            p -= 0.1 * grads[key]
    assert isinstance(loss, float) and isinstance(acc, float)
    for key, p in model.params.items():
        assert p.dtype == np.float32, key
        assert grads[key].dtype == np.float32, key
        assert grads[key].shape == p.shape, key
    assert [model.params[f"b{i}"].shape for i in (1, 2, 3)] == [(8,), (6,), (5,)]
    # float64 inputs are converted, not let through to upcast the net
    _, grads64 = model.loss_and_grads(X.astype(np.float64), y)
    assert {g.dtype for g in grads64.values()} == {np.dtype(np.float32)}
    assert model.predict_proba(X.astype(np.float64)).dtype == np.float32


def test_huge_but_finite_inputs_are_accepted():
    X = np.full((3, 4), 3e38, np.float32)  # their sum overflows float32; they are finite
    X_checked, _ = DoomNet(4, 3, 2).check_inputs(X)
    assert X_checked is X  # already float32 and contiguous: no copy


def test_constructor_shapes_init_and_seed():
    model = DoomNet(784, 20, 10)
    assert model.hidden_sizes == (20,) and model.input_size == 784 and model.output_size == 10
    assert list(model.params) == ["W1", "b1", "W2", "b2"]
    assert model.params["W1"].shape == (784, 20) and model.params["b2"].shape == (10,)
    assert np.std(model.params["W1"]) == pytest.approx(1e-4, rel=0.05)
    deep = DoomNet(30, [40, 20, 10], 5, init="he")
    assert [deep.params[f"W{i}"].shape for i in (1, 2, 3, 4)] == [
        (30, 40),
        (40, 20),
        (20, 10),
        (10, 5),
    ]
    assert np.std(deep.params["W2"]) == pytest.approx(math.sqrt(2 / 40), rel=0.1)
    xavier = DoomNet(300, 100, 10, init="xavier")
    assert np.std(xavier.params["W1"]) == pytest.approx(math.sqrt(2 / 400), rel=0.05)
    same = DoomNet(784, 20, 10, seed=0)
    other = DoomNet(784, 20, 10, seed=1)
    assert np.array_equal(model.params["W1"], same.params["W1"])
    assert not np.array_equal(model.params["W1"], other.params["W1"])


def test_constructor_leaves_global_random_state_alone():
    np.random.seed(123)  # noqa: NPY002 - the legacy global state is the thing under test
    before = np.random.get_state()[1].copy()  # noqa: NPY002
    DoomNet(10, 5, 3)
    assert np.array_equal(np.random.get_state()[1], before)  # noqa: NPY002


def test_predictions_probabilities_and_evaluate_agree():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(50, 6)).astype(np.float32)
    y = rng.integers(0, 4, size=50)
    model = DoomNet(6, 9, 4, std=0.7)
    probs = model.predict_proba(X)
    assert probs.shape == (50, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    pred = model.predict(X)
    assert pred.dtype == np.int64 and pred.shape == (50,)
    assert np.array_equal(pred, probs.argmax(axis=1))
    loss, acc = model.evaluate(X, y)
    assert acc == model.accuracy(X, y) == pytest.approx(np.mean(pred == y))
    assert loss == pytest.approx(-np.mean(np.log(probs[np.arange(50), y])), rel=1e-5)
    assert loss == pytest.approx(model.loss_and_grads(X, y)[0], rel=1e-6)


def test_evaluate_in_chunks_matches_one_pass(monkeypatch):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(103, 6)).astype(np.float32)
    y = rng.integers(0, 4, size=103)
    model = DoomNet(6, 9, 4, std=0.7)
    whole = model.evaluate(X, y)
    whole_pred = model.predict(X)
    monkeypatch.setattr("doomnet.model.EVAL_CHUNK", 10)
    chunked = model.evaluate(X, y)
    assert chunked[1] == whole[1]
    assert chunked[0] == pytest.approx(whole[0], rel=1e-6)
    assert np.array_equal(model.predict(X), whole_pred)


def test_softmax_is_stable_for_huge_logits():
    model = DoomNet(2, 3, 2, std=1.0, dtype=np.float32)
    X = np.array([[1e4, -1e4], [-1e4, 1e4]], dtype=np.float32)
    loss, grads = model.loss_and_grads(X, np.array([0, 1]))
    assert math.isfinite(loss)
    assert all(np.isfinite(g).all() for g in grads.values())
    assert np.isfinite(model.predict_proba(X)).all()


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(20, 8)).astype(np.float32)
    model = DoomNet(8, (7, 5), 3, std=0.5, seed=4, init="xavier", l2=0.01)
    path = tmp_path / "weights.npz"
    model.save(path)
    loaded = DoomNet.load(path)
    assert path.exists() and not list(tmp_path.glob("*.tmp"))
    assert loaded.hidden_sizes == (7, 5) and loaded.l2 == 0.01 and loaded.init == "xavier"
    assert loaded.dtype == np.float32
    for key, p in model.params.items():
        assert np.array_equal(loaded.params[key], p) and loaded.params[key].dtype == p.dtype
    assert np.array_equal(loaded.predict_proba(X), model.predict_proba(X))


def _write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_load_rejects_bad_files(tmp_path):
    model = DoomNet(8, 5, 3)
    good = tmp_path / "good.npz"
    model.save(good)
    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files}

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file at all")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:100])
    mismatched = tmp_path / "mismatched.npz"
    _write_npz(mismatched, **{**arrays, "W2": np.zeros((4, 3), np.float32)})
    bias_2d = tmp_path / "bias_2d.npz"
    _write_npz(bias_2d, **{**arrays, "b1": np.zeros((1, 5), np.float32)})
    wrong_hidden = tmp_path / "wrong_hidden.npz"
    _write_npz(wrong_hidden, **{**arrays, "hidden_sizes": np.array([5, 5])})
    int_weights = tmp_path / "int_weights.npz"
    _write_npz(int_weights, **{**arrays, "W1": np.zeros((8, 5), np.int64)})
    missing = tmp_path / "missing.npz"
    _write_npz(missing, **{k: v for k, v in arrays.items() if k != "b2"})
    plain_npy = tmp_path / "plain_npy.npz"
    with open(plain_npy, "wb") as f:
        np.save(f, np.zeros(3))
    pickled = tmp_path / "pickled.npz"
    _write_npz(pickled, **{**arrays, "init": np.array([{"evil": 1}], dtype=object)})

    bad_files = (garbage, truncated, plain_npy, mismatched, bias_2d, wrong_hidden, int_weights)
    for path in (*bad_files, missing):
        with pytest.raises(ValueError, match=path.name):
            DoomNet.load(path)
    with pytest.raises(ValueError, match="pickled.npz"):
        DoomNet.load(pickled)
    with pytest.raises(FileNotFoundError):
        DoomNet.load(tmp_path / "absent.npz")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"hidden_size": 0}, "hidden_size"),
        ({"hidden_size": -3}, "hidden_size"),
        ({"hidden_size": [20, 0]}, "hidden_size"),
        ({"hidden_size": []}, "hidden_size"),
        ({"hidden_size": 2.5}, "hidden_size"),
        ({"input_size": 0}, "input_size"),
        ({"output_size": 0}, "output_size"),
        ({"std": 0.0}, "std"),
        ({"std": -1.0}, "std"),
        ({"std": float("nan")}, "std"),
        ({"std": float("inf")}, "std"),
        ({"init": "glorot"}, "init"),
        ({"l2": -0.1}, "l2"),
        ({"l2": float("nan")}, "l2"),
        ({"dtype": np.int32}, "dtype"),
        ({"seed": -1}, "seed"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, name):
    args = {"input_size": 4, "hidden_size": 3, "output_size": 2, **kwargs}
    with pytest.raises(ValueError, match=name):
        DoomNet(**args)


@pytest.mark.parametrize(
    ("X", "y", "name"),
    [
        (np.zeros(4, np.float32), None, "X must be 2-D"),
        (np.zeros((3, 5), np.float32), None, "columns"),
        (np.zeros((0, 4), np.float32), None, "no rows"),
        (np.array([[0, 1, np.nan, 0]], np.float32), None, "NaN"),
        (np.array([[0, 1, np.inf, 0]], np.float32), None, "NaN or inf"),
        (np.zeros((3, 4), np.float32), np.array([0, 1, 2]), "y labels"),
        (np.zeros((3, 4), np.float32), np.array([0, -1, 1]), "y labels"),
        (np.zeros((3, 4), np.float32), np.array([0.0, 1.0, 1.0]), "y must hold integer"),
        (np.zeros((3, 4), np.float32), np.eye(3, 2, dtype=np.int64), "y must be 1-D"),
        (np.zeros((3, 4), np.float32), np.array([0, 1]), "y must be 1-D"),
    ],
)
def test_loss_and_grads_rejects_bad_inputs(X, y, name):
    model = DoomNet(4, 3, 2)
    if y is None:
        y = np.zeros(len(X), dtype=np.int64)
    with pytest.raises(ValueError, match=name):
        model.loss_and_grads(X, y)


def test_import_is_light():
    code = (
        "import sys; import doomnet.model;"
        "heavy = {'hydra', 'mlflow', 'optuna', 'sklearn', 'matplotlib', 'pandas'};"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("hidden", [5, (6, 4)], ids=["1-hidden", "2-hidden"])
def test_blocks_and_cores_give_the_one_block_result(monkeypatch, hidden):
    """loss_grads_acc sums over row blocks (and over cores for big batches): the result must
    be the one-block computation's, up to float64 rounding."""
    import doomnet.model as model_module

    rng = np.random.default_rng(3)
    X = rng.normal(size=(50, 4))
    y = rng.integers(0, 3, size=50)
    model = DoomNet(4, hidden, 3, std=0.5, seed=2, dtype=np.float64, l2=0.1)
    whole = model.loss_grads_acc(X, y)
    monkeypatch.setattr(model_module, "BLOCK_ROWS", 7)  # 50 rows: blocks of 7 and a last of 1
    monkeypatch.setattr(model_module, "MIN_ROWS_PER_CORE", 10)  # and every core gets a share
    blocked = model.loss_grads_acc(X, y)
    assert blocked[0] == pytest.approx(whole[0], rel=1e-12)
    assert blocked[2] == whole[2]
    for key, g in whole[1].items():
        np.testing.assert_allclose(blocked[1][key], g, rtol=1e-10, atol=1e-14)
        assert blocked[1][key].shape == model.params[key].shape
