"""Update rules: hand-computed steps, loss decrease, weight decay, clipping, bad values."""

import math

import numpy as np
import pytest

from doomnet.model import DoomNet
from doomnet.optim import SGD, Adam, Momentum, Optimizer, global_norm, make_optimizer


def tiny():
    """A matrix and a bias with their gradients (float64, hand-checkable)."""
    params = {"W": np.array([[1.0, -2.0], [0.5, 0.0]]), "b": np.array([0.3, -0.1])}
    grads = {"W": np.array([[0.2, -0.4], [0.1, 1.0]]), "b": np.array([-0.5, 0.25])}
    return params, grads


def copy(d):
    return {k: v.copy() for k, v in d.items()}


def test_sgd_step_is_p_minus_lr_g_and_leaves_grads_alone():
    params, grads = tiny()
    before, grads_before = copy(params), copy(grads)
    SGD().step(params, grads, lr=0.1)
    for k in params:
        np.testing.assert_allclose(params[k], before[k] - 0.1 * grads[k])
        assert np.array_equal(grads[k], grads_before[k])


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_matches_hand_computed_steps(nesterov):
    params, grads = tiny()
    p0 = copy(params)
    g2 = {k: -0.5 * v for k, v in grads.items()}  # second step's gradient
    opt = Momentum(momentum=0.9, nesterov=nesterov)
    opt.step(params, grads, lr=0.1)
    opt.step(params, g2, lr=0.1)
    for k in params:
        v1 = grads[k]
        v2 = 0.9 * v1 + g2[k]
        if nesterov:
            expected = p0[k] - 0.1 * (grads[k] + 0.9 * v1) - 0.1 * (g2[k] + 0.9 * v2)
        else:
            expected = p0[k] - 0.1 * v1 - 0.1 * v2
        np.testing.assert_allclose(params[k], expected, rtol=1e-12)


def test_adam_matches_hand_computed_steps():
    params, grads = tiny()
    p = copy(params)
    g2 = {k: 3.0 * v + 0.1 for k, v in grads.items()}
    opt = Adam(beta1=0.8, beta2=0.9, eps=1e-3)
    opt.step(params, grads, lr=0.01)
    opt.step(params, g2, lr=0.01)
    for k in params:
        m = np.zeros_like(p[k])
        v = np.zeros_like(p[k])
        expected = p[k].copy()
        for t, g in enumerate((grads[k], g2[k]), start=1):
            m = 0.8 * m + 0.2 * g
            v = 0.9 * v + 0.1 * g * g
            m_hat, v_hat = m / (1 - 0.8**t), v / (1 - 0.9**t)
            expected -= 0.01 * m_hat / (np.sqrt(v_hat) + 1e-3)
        np.testing.assert_allclose(params[k], expected, rtol=1e-12)
    # The first Adam step moves every entry by about lr (the update is sign-like).
    params, grads = tiny()
    before = copy(params)
    Adam(eps=1e-12).step(params, grads, lr=0.01)
    np.testing.assert_allclose(np.abs(params["W"] - before["W"]), 0.01, rtol=1e-6)


def test_sgd_and_momentum_weight_decay_is_l2_on_matrices_only():
    params, grads = tiny()
    p0 = copy(params)
    SGD(weight_decay=0.5).step(params, grads, lr=0.1)
    np.testing.assert_allclose(params["W"], p0["W"] - 0.1 * (grads["W"] + 0.5 * p0["W"]))
    np.testing.assert_allclose(params["b"], p0["b"] - 0.1 * grads["b"])  # no decay on biases

    params, grads = tiny()
    opt = Momentum(momentum=0.5, weight_decay=0.5)
    opt.step(params, grads, lr=0.1)
    v1 = grads["W"] + 0.5 * p0["W"]
    p1 = p0["W"] - 0.1 * v1
    opt.step(params, grads, lr=0.1)
    v2 = 0.5 * v1 + grads["W"] + 0.5 * p1
    np.testing.assert_allclose(params["W"], p1 - 0.1 * v2)


def test_adam_weight_decay_is_decoupled():
    params, grads = tiny()
    plain = copy(params)
    Adam().step(plain, grads, lr=0.01)
    decayed = copy(params)
    Adam(weight_decay=0.1).step(decayed, grads, lr=0.01)
    # AdamW: the same adaptive step, applied to p * (1 - lr * wd)
    adaptive = plain["W"] - params["W"]
    np.testing.assert_allclose(decayed["W"], params["W"] * (1 - 0.01 * 0.1) + adaptive)
    np.testing.assert_allclose(decayed["b"], plain["b"])
    # With a zero gradient only the decay acts: p shrinks by exactly (1 - lr * wd).
    zero = {k: np.zeros_like(v) for k, v in params.items()}
    shrunk = copy(params)
    Adam(weight_decay=0.1).step(shrunk, zero, lr=0.5)
    np.testing.assert_allclose(shrunk["W"], params["W"] * 0.95)


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam"])
def test_clip_norm_caps_the_global_gradient_norm(name):
    params, grads = tiny()
    norm = global_norm(grads)
    assert norm == pytest.approx(math.sqrt(sum(np.sum(g**2) for g in grads.values())))
    clipped, reference = copy(params), copy(params)
    scaled = {k: g * (0.5 / norm) for k, g in grads.items()}  # the gradient rescaled by hand
    make_optimizer(name, clip_norm=0.5).step(clipped, grads, lr=1.0)
    make_optimizer(name).step(reference, scaled, lr=1.0)
    for k in params:
        np.testing.assert_allclose(clipped[k], reference[k], rtol=1e-12)
    if name == "sgd":  # the SGD update is -lr * clipped gradient: its norm is clip_norm
        delta = {k: clipped[k] - params[k] for k in params}
        assert global_norm(delta) == pytest.approx(0.5)
    # a norm already under the limit is left as it is
    loose, free = copy(params), copy(params)
    make_optimizer(name, clip_norm=100.0).step(loose, grads, lr=1.0)
    make_optimizer(name).step(free, grads, lr=1.0)
    for k in params:
        np.testing.assert_array_equal(loose[k], free[k])


@pytest.mark.parametrize(
    ("name", "kwargs", "lr"),
    [
        ("sgd", {}, 0.5),
        ("sgd", {"weight_decay": 1e-3, "clip_norm": 5.0}, 0.5),
        ("momentum", {}, 0.1),
        ("nesterov", {}, 0.1),
        ("adam", {}, 0.01),
        ("adam", {"weight_decay": 1e-2}, 0.01),
    ],
)
def test_each_optimizer_decreases_the_loss(name, kwargs, lr):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 5)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + 2 * (X[:, 2] > 0)
    model = DoomNet(5, 16, 4, init="he")
    opt = make_optimizer(name, **kwargs)
    first, _ = model.loss_and_grads(X, y)
    for _ in range(100):
        loss, grads = model.loss_and_grads(X, y)
        opt.step(model.params, grads, lr)
    assert loss < 0.5 * first
    assert all(p.dtype == np.float32 for p in model.params.values())


def test_buffers_are_allocated_once_and_reused():
    params, grads = tiny()
    opt = Adam(weight_decay=0.1, clip_norm=0.1)
    opt.step(params, grads, lr=0.1)
    buffers = {k: id(v) for k, v in opt._buffers.items()}
    for _ in range(3):
        opt.step(params, grads, lr=0.1)
    assert {k: id(v) for k, v in opt._buffers.items()} == buffers
    assert opt.t == 4


def test_float32_params_stay_float32_with_float64_hyperparameters():
    params = {"W": np.ones((3, 2), np.float32), "b": np.ones(2, np.float32)}
    grads = {"W": np.full((3, 2), 0.5, np.float32), "b": np.full(2, 0.5, np.float32)}
    for name in ("sgd", "momentum", "nesterov", "adam"):
        opt = make_optimizer(name, weight_decay=np.float64(0.01), clip_norm=np.float64(0.3))
        opt.step(params, grads, lr=np.float64(0.1))
        assert all(p.dtype == np.float32 for p in params.values()), name


def test_make_optimizer_builds_the_named_rule():
    assert type(make_optimizer("sgd")) is SGD
    assert type(make_optimizer("momentum", momentum=0.5)) is Momentum
    nesterov = make_optimizer("nesterov")
    assert isinstance(nesterov, Momentum) and nesterov.nesterov and nesterov.momentum == 0.9
    adam = make_optimizer("adam", beta1=0.8, clip_norm=1.0)
    assert isinstance(adam, Optimizer) and adam.beta1 == 0.8 and adam.clip_norm == 1.0


@pytest.mark.parametrize(
    ("name", "kwargs", "arg"),
    [
        ("rmsprop", {}, "name"),
        ("momentum", {"momentum": 1.0}, "momentum"),
        ("momentum", {"momentum": -0.1}, "momentum"),
        ("nesterov", {"momentum": float("nan")}, "momentum"),
        ("momentum", {"nesterov": "yes"}, "nesterov"),
        ("nesterov", {"nesterov": False}, "nesterov"),
        ("adam", {"beta1": 1.0}, "beta1"),
        ("adam", {"beta2": -0.5}, "beta2"),
        ("adam", {"eps": 0.0}, "eps"),
        ("sgd", {"weight_decay": -1e-4}, "weight_decay"),
        ("adam", {"weight_decay": float("inf")}, "weight_decay"),
        ("sgd", {"clip_norm": 0.0}, "clip_norm"),
        ("momentum", {"clip_norm": -1.0}, "clip_norm"),
        ("sgd", {"momentum": 0.9}, "momentum"),
        ("adam", {"betas": (0.9, 0.99)}, "betas"),
    ],
)
def test_make_optimizer_rejects_bad_names_and_values(name, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        make_optimizer(name, **kwargs)


@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan"), float("inf")])
def test_step_rejects_bad_lr(lr):
    params, grads = tiny()
    with pytest.raises(ValueError, match="lr"):
        SGD().step(params, grads, lr)
