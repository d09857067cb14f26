"""Update rules: each `step(params, grads, lr)` changes the arrays in `params` in place.

    SGD       p -= lr * g                                  (the notebook's rule)
    Momentum  v = momentum * v + g;  p -= lr * v           (PyTorch's form: v does not
              Nesterov: p -= lr * (g + momentum * v)        depend on lr, so lr may change)
    Adam      m, v = moving averages of g and g**2, bias-corrected;
              p -= lr * m_hat / (sqrt(v_hat) + eps)

Options shared by all three:

- `clip_norm`: if the global L2 norm of all gradients together exceeds clip_norm, every
  gradient is scaled by clip_norm / norm before anything else (the caller's grads are
  not modified).
- `weight_decay`: shrinks the weight matrices (arrays with 2 or more dimensions; biases
  are not decayed, as in nanoGPT). For SGD and Momentum it is the classic L2 term added
  to the gradient, g + weight_decay * p (after clipping). For Adam it is decoupled, as in
  AdamW: p -= lr * weight_decay * p, outside the adaptive scaling.

State (velocity, moments, scratch space) lives in buffers allocated on the first step
and reused, so a step allocates no arrays.
"""

from __future__ import annotations

import inspect
import math

import numpy as np

Params = dict[str, np.ndarray]


class Optimizer:
    """Base class: gradient clipping, the buffer store and argument checks."""

    def __init__(self, *, weight_decay: float = 0.0, clip_norm: float | None = None) -> None:
        self.weight_decay = _number("weight_decay", weight_decay, low=0.0)
        if clip_norm is not None:
            clip_norm = _number("clip_norm", clip_norm, low=0.0, low_inclusive=False)
        self.clip_norm = clip_norm
        self.t = 0  # steps taken
        self._buffers: dict[tuple[str, str], np.ndarray] = {}

    def step(self, params: Params, grads: Params, lr: float) -> None:
        """Update every array in `params` in place from `grads` (same keys and shapes)."""
        lr = _number("lr", lr, low=0.0, low_inclusive=False)
        scale = self._clip_scale(grads)
        self.t += 1
        for key, p in params.items():
            self._update(key, p, grads[key], lr, scale)

    def _update(self, key: str, p: np.ndarray, g: np.ndarray, lr: float, scale: float) -> None:
        raise NotImplementedError  # each rule defines it

    def _clip_scale(self, grads: Params) -> float:
        """The factor that brings the global gradient norm down to clip_norm (1.0 if it
        is already within it, or if clipping is off)."""
        if self.clip_norm is None:
            return 1.0
        norm = global_norm(grads)
        return self.clip_norm / norm if norm > self.clip_norm else 1.0

    def _buffer(self, key: str, name: str, like: np.ndarray) -> np.ndarray:
        """A zero-initialised array shaped like `like`, created once per (key, name)."""
        buf = self._buffers.get((key, name))
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = self._buffers[key, name] = np.zeros_like(like)
        return buf

    def _decays(self, p: np.ndarray) -> bool:
        return self.weight_decay > 0.0 and p.ndim >= 2

    def _grad(self, key: str, p: np.ndarray, g: np.ndarray, scale: float, l2: bool) -> np.ndarray:
        """The gradient the rule uses: scale * g, plus weight_decay * p if `l2` (coupled
        decay) applies to p. Returns g itself when there is nothing to add."""
        add_l2 = l2 and self._decays(p)
        if scale == 1.0 and not add_l2:
            return g
        out = self._buffer(key, "grad", p)
        np.multiply(g, scale, out=out)
        if add_l2:
            decay = self._buffer(key, "scratch", p)
            np.multiply(p, self.weight_decay, out=decay)
            out += decay
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Plain gradient descent, p -= lr * g; weight_decay is L2 added to the gradient."""

    def _update(self, key: str, p: np.ndarray, g: np.ndarray, lr: float, scale: float) -> None:
        g = self._grad(key, p, g, scale, l2=True)
        delta = self._buffer(key, "scratch", p)
        np.multiply(g, lr, out=delta)
        p -= delta


class Momentum(Optimizer):
    """Heavy-ball momentum (or Nesterov's variant); weight_decay is L2 added to the gradient.

    v = momentum * v + g, then p -= lr * v, or p -= lr * (g + momentum * v) with
    nesterov=True. Both are PyTorch's formulas.
    """

    def __init__(
        self,
        momentum: float = 0.9,
        nesterov: bool = False,
        *,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(weight_decay=weight_decay, clip_norm=clip_norm)
        self.momentum = _number("momentum", momentum, low=0.0, high=1.0)
        if not isinstance(nesterov, bool | np.bool_):
            raise ValueError(f"nesterov must be True or False, got {nesterov!r}")
        self.nesterov = bool(nesterov)

    def _update(self, key: str, p: np.ndarray, g: np.ndarray, lr: float, scale: float) -> None:
        g = self._grad(key, p, g, scale, l2=True)
        v = self._buffer(key, "velocity", p)
        v *= self.momentum
        v += g
        delta = self._buffer(key, "scratch", p)
        if self.nesterov:
            np.multiply(v, self.momentum, out=delta)
            delta += g
            delta *= lr
        else:
            np.multiply(v, lr, out=delta)
        p -= delta


class Adam(Optimizer):
    """Adam with bias correction; weight_decay is decoupled (AdamW): p -= lr * wd * p.

    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g**2
    p -= lr / (1 - beta1**t) * m / (sqrt(v / (1 - beta2**t)) + eps)
    """

    def __init__(
        self,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        *,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(weight_decay=weight_decay, clip_norm=clip_norm)
        self.beta1 = _number("beta1", beta1, low=0.0, high=1.0)
        self.beta2 = _number("beta2", beta2, low=0.0, high=1.0)
        self.eps = _number("eps", eps, low=0.0, low_inclusive=False)

    def _update(self, key: str, p: np.ndarray, g: np.ndarray, lr: float, scale: float) -> None:
        g = self._grad(key, p, g, scale, l2=False)
        m = self._buffer(key, "m", p)
        v = self._buffer(key, "v", p)
        tmp = self._buffer(key, "scratch", p)
        m *= self.beta1
        np.multiply(g, 1.0 - self.beta1, out=tmp)
        m += tmp  # m = beta1 * m + (1 - beta1) * g
        v *= self.beta2
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - self.beta2
        v += tmp  # v = beta2 * v + (1 - beta2) * g**2
        if self._decays(p):
            p *= 1.0 - lr * self.weight_decay  # decoupled weight decay (AdamW)
        bias1 = 1.0 - self.beta1**self.t
        bias2 = 1.0 - self.beta2**self.t
        np.sqrt(v, out=tmp)
        tmp *= 1.0 / math.sqrt(bias2)
        tmp += self.eps  # sqrt(v_hat) + eps
        np.divide(m, tmp, out=tmp)
        tmp *= lr / bias1  # lr * m_hat / (sqrt(v_hat) + eps)
        p -= tmp


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": Momentum, "adam": Adam}


def make_optimizer(name: str, **kwargs: object) -> Optimizer:
    """Build an optimizer by name: "sgd", "momentum", "nesterov" (momentum with
    nesterov=True) or "adam". Keyword arguments go to its constructor; an unknown name
    or argument, or a bad value, raises ValueError naming it."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer name must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    cls = OPTIMIZERS[name]
    accepted = set(inspect.signature(cls).parameters)
    if name == "nesterov":  # "nesterov" is Momentum with the flag set
        accepted.discard("nesterov")
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"optimizer {name!r} does not take argument(s) {unknown}; it takes {sorted(accepted)}"
        )
    if name == "nesterov":
        kwargs["nesterov"] = True
    return cls(**kwargs)


def global_norm(grads: Params) -> float:
    """L2 norm of all gradient arrays taken together, as one long vector."""
    return math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))


def _number(
    name: str,
    value: object,
    *,
    low: float,
    high: float | None = None,
    low_inclusive: bool = True,
) -> float:
    """`value` as a finite float in [low, high) (or (low, high) if not low_inclusive),
    else ValueError naming `name`."""
    ok_type = isinstance(value, int | float | np.integer | np.floating)
    if not ok_type or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    too_low = value < low if low_inclusive else value <= low
    if too_low or (high is not None and value >= high):
        lo = "[" if low_inclusive else "("
        hi = f"{high})" if high is not None else "inf)"
        raise ValueError(f"{name} must be in {lo}{low}, {hi}, got {value}")
    return value
