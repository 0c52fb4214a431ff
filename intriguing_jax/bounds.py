"""Certified lower bounds on the minimum adversarial perturbation, by bound propagation through any JAX model.

``certified_radius(logits_fn, images, labels)`` finds, per image, the largest ε (by bisection) for which
the bound proves that no perturbation δ with ‖δ‖ ≤ ε (L2 or L∞) and x + δ in [0, 1] changes the label
(or, with ``targets``, makes the target win). Two methods, read off the model's jaxpr:

- ``"ibp"``: interval bound propagation (Gowal et al. 2018): each value's elementwise interval, linear
  layers through |W|, monotone functions (ReLU, sigmoid, tanh, max-pooling) at the interval's ends.
- ``"crown"``: backward linear bound propagation (Zhang et al., NeurIPS 2018; Fast-Lin, Weng et al. 2018)
  for networks that alternate affine maps (dense, convolutions, average pooling, reshapes — any linear
  primitive, materialised as a matrix by ``jax.jacfwd``) and elementwise activations: ReLU (the adaptive
  CROWN relaxation), sigmoid and tanh (parallel-chord bounds, exact extrema of σ(z) − k·z on [l, u]).
  Each layer's pre-activation bounds come from a backward pass to the input; the specification
  (z_label − z_j) is folded into the last layer, so its correlations are kept.

Max-pooling has a sound interval rule (``"ibp"``) but no linear relaxation here: ``"crown"`` raises for
it, as for any primitive it does not know, naming the primitive. Bounds are computed in float64 numpy
(soundness against rounding); the box [0, 1] is used exactly for L∞ and ignored (a sound relaxation) for L2.

References: Gowal et al. 2018 (IBP); Zhang et al. 2018 (CROWN); Weng et al. 2018 (Fast-Lin); Szegedy et
al. 2014, Sec. 4.3 (the product of per-layer Lipschitz constants, ``spectral``, which these bounds
tighten).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

METHODS = ("ibp", "crown")
NORMS = (2, np.inf)
# primitives that are linear in their input-dependent operand (the other operands constant)
_LINEAR = {"dot_general", "add", "sub", "neg", "mul", "div", "reshape", "broadcast_in_dim", "transpose", "squeeze",
           "expand_dims", "convert_element_type", "conv_general_dilated", "reduce_sum", "reduce_window_sum", "slice",
           "concatenate", "pad", "copy", "copy_p"}
_ACTIVATIONS = {"logistic": "sigmoid", "tanh": "tanh"}
_CALLS = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
          "custom_vjp_call_jaxpr": "fun_jaxpr", "remat": "jaxpr", "checkpoint": "jaxpr"}


class Unsupported(ValueError):
    """The model contains a primitive (or a structure) the chosen bound method does not handle."""


# ---- reading the model --------------------------------------------------------------------------------


def _flat_fn(logits_fn: Callable, shape) -> Callable:
    """One example, flattened: ``[D] -> [K]``."""
    return lambda x: logits_fn(x.reshape((1,) + tuple(shape)))[0]


class _Node(NamedTuple):
    """An input-dependent value: a function of the current segment's input (flat vector)."""

    fn: Callable
    segment: int


def _walk(closed, x_dim: int) -> list:
    """The model as a chain of layers: ``[("affine", fn, in_dim, out_dim), ("act", kind), ...]``; each
    affine ``fn`` maps the previous activation (flat) to the next pre-activation (any shape)."""
    layers, state = [], {"segment": 0, "in_dim": x_dim}

    def shape_of(node):
        return jax.eval_shape(node.fn, jax.ShapeDtypeStruct((state["in_dim"],), jnp.float32)).shape

    def activation(node, kind):
        shape = shape_of(node)
        dim = int(np.prod(shape))
        layers.append(("affine", node.fn, state["in_dim"], dim))
        layers.append(("act", kind))
        state["segment"] += 1
        state["in_dim"] = dim
        return _Node(lambda u: u.reshape(shape), state["segment"])  # elementwise: the same shape

    def run(jaxpr, consts, args):
        env = dict(zip(jaxpr.constvars, consts))
        env.update(zip(jaxpr.invars, args))
        read = lambda v: v.val if isinstance(v, jcore.Literal) else env[v]  # noqa: E731
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            ins = [read(v) for v in eqn.invars]
            dep = [i for i, a in enumerate(ins) if isinstance(a, _Node)]
            if not dep:  # constants only: evaluate now
                outs = eqn.primitive.bind(*ins, **eqn.params)
                outs = outs if eqn.primitive.multiple_results else [outs]
            elif name == "custom_jvp_call" and _is_relu(eqn.params["call_jaxpr"]):
                outs = [activation(ins[dep[0]], "relu")]
            elif name in _CALLS:
                sub = eqn.params[_CALLS[name]]
                outs = run(sub.jaxpr, sub.consts, ins) if hasattr(sub, "jaxpr") else run(sub, (), ins)
            elif name in _ACTIVATIONS or (name == "max" and _zero(ins, dep)):
                outs = [activation(ins[dep[0]], _ACTIVATIONS.get(name, "relu"))]
            elif name in _LINEAR:
                if any(ins[i].segment != state["segment"] for i in dep):
                    raise Unsupported(f"{name} joins values of different layers (a non-sequential network): "
                                      "'crown' handles chains of affine maps and elementwise activations")
                if (name in ("mul", "dot_general", "conv_general_dilated") and len(dep) > 1) or (name == "div" and dep != [0]):
                    raise Unsupported(f"{name} of input-dependent values is not linear")
                outs = [_Node(_bind(eqn, ins), state["segment"])]
            else:
                raise Unsupported(f"primitive {name!r} has no linear relaxation in 'crown' (supported: linear "
                                  "maps, ReLU, sigmoid, tanh; method='ibp' also bounds max-pooling)")
            env.update(zip(eqn.outvars, outs))
        return [read(v) for v in jaxpr.outvars]

    out = run(closed.jaxpr, closed.consts, [_Node(lambda u: u, 0)])[0]
    if not isinstance(out, _Node):
        raise Unsupported("the logits do not depend on the input")
    layers.append(("affine", out.fn, state["in_dim"], int(np.prod(shape_of(out)))))
    return layers


def _bind(eqn, ins):
    def fn(u):
        vals = [a.fn(u) if isinstance(a, _Node) else a for a in ins]
        out = eqn.primitive.bind(*vals, **eqn.params)
        return out[0] if eqn.primitive.multiple_results else out
    return fn


def _zero(ins, dep) -> bool:
    other = [a for i, a in enumerate(ins) if i not in dep]
    return len(dep) == 1 and len(other) == 1 and np.all(np.asarray(other[0]) == 0)


def _is_relu(closed) -> bool:
    """Whether a custom-JVP call is ``jax.nn.relu`` (its body: one ``max`` with 0, possibly in a ``pjit``)."""
    jaxpr = closed.jaxpr if hasattr(closed, "jaxpr") else closed
    names = [e.primitive.name for e in jaxpr.eqns]
    if names in (["pjit"], ["jit"]):
        return _is_relu(jaxpr.eqns[0].params["jaxpr"])
    return names == ["max"]


def _affine_matrix(fn, in_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(W [out, in], b [out])`` of an affine ``fn`` (flat in, any shape out), in float64."""
    flat = lambda u: jnp.reshape(fn(u), (-1,))  # noqa: E731
    zero = jnp.zeros((in_dim,), jnp.float32)
    w = jax.jacfwd(flat)(zero)
    return np.asarray(w, np.float64), np.asarray(flat(zero), np.float64)


class Network(NamedTuple):
    """A model read as alternating affine layers ``(W, b)`` and activation kinds (``"relu"``, ``"sigmoid"``,
    ``"tanh"``): ``z_1 = W_1 x + b_1, a_1 = σ_1(z_1), ..., logits = W_L a_{L-1} + b_L``."""

    weights: list
    biases: list
    activations: list


def read_network(logits_fn: Callable, input_shape) -> Network:
    """``logits_fn`` (``[N, *input_shape] -> [N, K]``) as a ``Network`` (for ``"crown"``); raises
    ``Unsupported`` naming a primitive it cannot relax."""
    d = int(np.prod(input_shape))
    closed = jax.make_jaxpr(_flat_fn(logits_fn, input_shape))(jnp.zeros((d,), jnp.float32))
    layers = _walk(closed, d)
    ws, bs, acts = [], [], []
    for lay in layers:
        if lay[0] == "affine":
            w, b = _affine_matrix(lay[1], lay[2])
            ws.append(w)
            bs.append(b)
        else:
            acts.append(lay[1])
    return Network(ws, bs, acts)


# ---- relaxations --------------------------------------------------------------------------------------


def _sigma(kind, z):
    return {"sigmoid": lambda v: 1 / (1 + np.exp(-v)), "tanh": np.tanh, "relu": lambda v: np.maximum(v, 0)}[kind](z)


def relaxation(kind: str, lo: np.ndarray, hi: np.ndarray):
    """Linear bounds ``a_l·z + c_l ≤ σ(z) ≤ a_u·z + c_u`` on ``[lo, hi]``, elementwise (float64)."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if kind == "relu":
        active, dead = lo >= 0, hi <= 0
        cross = ~active & ~dead
        width = np.where(cross, hi - lo, 1.0)
        a_u = np.where(active, 1.0, np.where(dead, 0.0, hi / width))
        c_u = np.where(cross, -lo * hi / width, 0.0)
        a_l = np.where(active, 1.0, np.where(dead, 0.0, (hi > -lo).astype(np.float64)))
        return a_l, np.zeros_like(lo), a_u, c_u
    # parallel chords: slope k = (σ(hi) − σ(lo)) / (hi − lo); intercepts = the exact min and max of σ(z) − k·z
    width = np.maximum(hi - lo, 1e-12)
    k = np.where(hi - lo > 1e-12, (_sigma(kind, hi) - _sigma(kind, lo)) / width, _derivative(kind, lo))
    cands = [lo, hi] + _stationary(kind, k)
    vals = []
    for z in cands:
        inside = (z >= lo) & (z <= hi)
        zc = np.clip(z, lo, hi)
        v = _sigma(kind, zc) - k * zc
        vals.append((np.where(inside, v, np.inf), np.where(inside, v, -np.inf)))
    c_l = np.min([v[0] for v in vals], axis=0) - 1e-9
    c_u = np.max([v[1] for v in vals], axis=0) + 1e-9
    return k, c_l, k, c_u


def _derivative(kind, z):
    s = _sigma(kind, z)
    return s * (1 - s) if kind == "sigmoid" else 1 - s ** 2


def _stationary(kind, k) -> list:
    """Points where σ'(z) = k (σ' ≤ 1/4 for sigmoid, ≤ 1 for tanh)."""
    if kind == "sigmoid":
        disc = np.sqrt(np.clip(1 - 4 * k, 0, None))
        out = []
        for s in ((1 + disc) / 2, (1 - disc) / 2):
            s = np.clip(s, 1e-15, 1 - 1e-15)
            out.append(np.log(s / (1 - s)))
        return out
    t = np.sqrt(np.clip(1 - k, 0, 1 - 1e-15))
    return [np.arctanh(t), -np.arctanh(t)]


# ---- bounds -------------------------------------------------------------------------------------------


def _concretize(a: np.ndarray, c: np.ndarray, x: np.ndarray, eps: float, norm, box) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of ``a·x' + c`` (rows of ``a``) over x' in the ball of radius ``eps`` around ``x`` (and
    the box, exactly for L∞)."""
    center = a @ x + c
    if norm == 2:
        r = eps * np.linalg.norm(a, axis=1)
        return center - r, center + r
    lo, hi = np.maximum(x - eps, box[0]) - x, np.minimum(x + eps, box[1]) - x
    low = np.sum(np.minimum(a * lo, a * hi), axis=1)
    high = np.sum(np.maximum(a * lo, a * hi), axis=1)
    return center + low, center + high


def crown_lower(net: Network, x: np.ndarray, spec: np.ndarray, eps: float, norm=2, box=(0.0, 1.0)) -> np.ndarray:
    """Lower bounds of ``spec @ logits(x')`` (rows of ``spec [S, K]``) over the ball: CROWN, float64."""
    n = len(net.weights)
    bounds = []  # pre-activation (lo, hi) of each hidden layer

    def backward(layer: int, lin: np.ndarray, const: np.ndarray, lower: bool) -> tuple[np.ndarray, np.ndarray]:
        """The linear bound ``lin @ z_layer + const`` pushed back to the input: ``(a, c)`` with
        ``a·x + c`` a lower (or upper) bound of it."""
        a, c = lin, const
        for k in range(layer, 0, -1):
            w, b = net.weights[k], net.biases[k]
            c = c + a @ b
            a = a @ w  # now a bound in terms of the activation a_k = σ(z_k)
            lo, hi = bounds[k - 1]
            a_l, c_l, a_u, c_u = relaxation(net.activations[k - 1], lo, hi)
            pos, neg = np.maximum(a, 0), np.minimum(a, 0)
            if lower:
                c = c + pos @ c_l + neg @ c_u
                a = pos * a_l + neg * a_u
            else:
                c = c + pos @ c_u + neg @ c_l
                a = pos * a_u + neg * a_l
        return a @ net.weights[0], c + a @ net.biases[0]

    for k in range(n - 1):
        eye = np.eye(net.weights[k].shape[0])
        a_l, c_l = backward(k, eye, np.zeros(len(eye)), True)
        a_u, c_u = backward(k, eye, np.zeros(len(eye)), False)
        bounds.append((_concretize(a_l, c_l, x, eps, norm, box)[0], _concretize(a_u, c_u, x, eps, norm, box)[1]))
    a, c = backward(n - 1, spec, np.zeros(len(spec)), True)
    return _concretize(a, c, x, eps, norm, box)[0]


def ibp_lower(logits_fn: Callable, input_shape, x: np.ndarray, spec: np.ndarray, eps: float, norm=2,
              box=(0.0, 1.0)) -> np.ndarray:
    """Lower bounds of ``spec @ logits(x')`` by interval propagation through the model's jaxpr (an L2 ball
    enters as its bounding box ∩ [0, 1])."""
    lo = np.maximum(x - eps, box[0]).astype(np.float64)
    hi = np.minimum(x + eps, box[1]).astype(np.float64)
    closed = jax.make_jaxpr(_flat_fn(logits_fn, input_shape))(jnp.zeros(x.shape, jnp.float32))
    with jax.enable_x64(True):
        out_lo, out_hi = _interval_run(closed.jaxpr, [np.asarray(c, np.float64) if hasattr(c, "dtype") else c
                                                      for c in closed.consts], [(jnp.asarray(lo), jnp.asarray(hi))])[0]
        out_lo, out_hi = np.asarray(out_lo), np.asarray(out_hi)
    pos, neg = np.maximum(spec, 0), np.minimum(spec, 0)
    return pos @ out_lo + neg @ out_hi


_MONOTONE = {"logistic", "tanh", "max", "reduce_window_max", "reduce_max", "exp"}  # nondecreasing in each input
_STRUCTURAL = {"reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "convert_element_type", "slice",
               "copy", "copy_p", "reduce_sum", "reduce_window_sum", "concatenate", "pad", "add", "sub", "neg"}


def _interval_run(jaxpr, consts, args):
    env = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    def wide(a):  # constants in float64, as the intervals are
        if isinstance(a, tuple) or not jnp.issubdtype(jnp.result_type(a), jnp.floating):
            return a
        return jnp.asarray(a, jnp.float64)

    for eqn in jaxpr.eqns:
        name, ins = eqn.primitive.name, [wide(read(v)) for v in eqn.invars]
        params = dict(eqn.params)
        if "preferred_element_type" in params and params["preferred_element_type"] is not None:
            params["preferred_element_type"] = jnp.float64
        if "new_dtype" in params:
            params["new_dtype"] = jnp.float64
        iv = [isinstance(a, tuple) for a in ins]
        if not any(iv):
            outs = eqn.primitive.bind(*ins, **params)
            outs = outs if eqn.primitive.multiple_results else [outs]
        elif name in _CALLS:
            sub = eqn.params[_CALLS[name]]
            sub = sub if hasattr(sub, "jaxpr") else jcore.ClosedJaxpr(sub, ())
            outs = _interval_run(sub.jaxpr, sub.consts, ins)
        elif name in ("dot_general", "conv_general_dilated", "mul", "div"):
            if sum(iv) > 1:
                raise Unsupported(f"{name} of two input-dependent values")
            (lo, hi), w = ins[iv.index(True)], ins[1 - iv.index(True)]
            w = jnp.asarray(w, jnp.float64)
            if name == "div":
                if iv.index(True) != 0:
                    raise Unsupported("div by an input-dependent value")
                w, name, prim = 1.0 / w, "mul", jax.lax.mul_p
            else:
                prim = eqn.primitive
            order = (lambda a, b: (a, b)) if iv.index(True) == 0 else (lambda a, b: (b, a))
            center, radius = (lo + hi) / 2, (hi - lo) / 2
            c = prim.bind(*order(center, w), **params)
            r = prim.bind(*order(radius, jnp.abs(w)), **params)
            outs = [(c - r, c + r)]
        elif name in _STRUCTURAL:
            if name in ("sub", "neg"):
                if name == "neg":
                    lo, hi = ins[0]
                    outs = [(-hi, -lo)]
                else:
                    a = ins[0] if iv[0] else (ins[0], ins[0])
                    b = ins[1] if iv[1] else (ins[1], ins[1])
                    outs = [(a[0] - b[1], a[1] - b[0])]
            else:
                los = [a[0] if t else a for a, t in zip(ins, iv)]
                his = [a[1] if t else a for a, t in zip(ins, iv)]
                outs = [(eqn.primitive.bind(*los, **params), eqn.primitive.bind(*his, **params))]
        elif name in _MONOTONE:
            los = [a[0] if t else a for a, t in zip(ins, iv)]
            his = [a[1] if t else a for a, t in zip(ins, iv)]
            outs = [(eqn.primitive.bind(*los, **params), eqn.primitive.bind(*his, **params))]
        else:
            raise Unsupported(f"primitive {name!r} has no interval rule in 'ibp'")
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


# ---- the radius ---------------------------------------------------------------------------------------


def _spec(label: int, target: int | None, k: int) -> np.ndarray:
    """Rows z_label − z_j for every j ≠ label (untargeted), or the single row z_label − z_target."""
    others = [target] if target is not None else [j for j in range(k) if j != label]
    spec = np.zeros((len(others), k))
    spec[:, label] = 1.0
    spec[np.arange(len(others)), others] = -1.0
    return spec


def certified_radius(logits_fn: Callable, images, labels, *, targets=None, norm=2, method: str = "crown",
                     box=(0.0, 1.0), eps_max: float | None = None, tol: float = 1e-3) -> np.ndarray:
    """Per image, the largest ε (within ``tol`` relative, by bisection) for which ``method`` proves the label
    cannot change (``targets`` None) or the target cannot win (``z_label > z_target``) for any δ with
    ‖δ‖_norm ≤ ε and x + δ in the box. 0 where even the clean image fails the check.

    Args:
      logits_fn: ``[N, ...] -> [N, K]``, any JAX function (``"crown"``: affine layers and elementwise
        ReLU/sigmoid/tanh; ``"ibp"``: also max-pooling); unsupported primitives raise ``Unsupported``.
      images: ``[N, ...]`` in the box; labels: ``[N]`` the labels to certify (e.g. the model's predictions).
      targets: ``[N]`` or None. norm: ``2`` or ``np.inf``. method: ``"ibp"`` or ``"crown"``.
      eps_max: the bisection's upper end (None: √D for L2, 1 for L∞). tol: relative precision.

    Returns:
      ``[N]`` float64 certified radii: sound lower bounds on the minimum adversarial perturbation.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be 2 or np.inf, got {norm!r}")
    images = np.asarray(images, np.float64)
    labels = np.asarray(labels)
    shape = images.shape[1:]
    d = int(np.prod(shape))
    k = int(jax.eval_shape(logits_fn, jax.ShapeDtypeStruct((1,) + shape, jnp.float32)).shape[-1])
    net = read_network(logits_fn, shape) if method == "crown" else None
    hi_default = float(np.sqrt(d)) if norm == 2 else 1.0
    out = np.zeros(len(images))
    for i, (x, y) in enumerate(zip(images.reshape(len(images), d), labels)):
        spec = _spec(int(y), None if targets is None else int(targets[i]), k)

        def proves(eps):
            lower = (crown_lower(net, x, spec, eps, norm, box) if net is not None
                     else ibp_lower(logits_fn, shape, x, spec, eps, norm, box))
            return bool(np.all(lower > 0))
        if not proves(0.0):
            continue
        lo, hi = 0.0, eps_max or hi_default
        if proves(hi):
            out[i] = hi
            continue
        while hi - lo > tol * max(lo, 1e-6) and hi - lo > 1e-9:
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if proves(mid) else (lo, mid)
        out[i] = lo
    return out


def sandwich(logits_fn: Callable, images, result, *, method: str = "crown", norm=2) -> dict:
    """Certified radius (``method``) vs the distortion an attack found, per attacked image: the targeted
    radius for the attack's target and the untargeted one, both around the model's prediction.

    Args:
      logits_fn: the model. images: ``[N, ...]`` the attacked images. result: their targeted
        ``AttackResult`` (``l2``, ``success``, ``target``).
      method, norm: as for ``certified_radius`` (the attack's ‖r‖ is L2: compare with ``norm=2``).

    Returns:
      dict: ``images``, ``compared`` (successful, not already the target), ``violations`` (a certified
      radius above a found distortion: must be 0), the ratio found / targeted radius (median, 10% and 90%
      quantiles, minimum), the mean found, targeted and untargeted radius, and ``_ratio`` (per image).
    """
    images = np.asarray(images)
    pred = np.asarray(jnp.argmax(logits_fn(jnp.asarray(images, jnp.float32)), -1))
    target = np.asarray(result.target)
    ok = np.asarray(result.success) & (pred != target)
    targeted = certified_radius(logits_fn, images[ok], pred[ok], targets=target[ok], norm=norm, method=method)
    untargeted = certified_radius(logits_fn, images[ok], pred[ok], norm=norm, method=method)
    found = np.asarray(result.l2, np.float64)[ok]
    if not ok.any():
        raise ValueError("no successful attack to compare with (every example failed or was already its target)")
    with np.errstate(divide="ignore"):
        ratio = found / targeted
    return {"method": method, "norm": "L2" if norm == 2 else "Linf", "images": int(len(ok)), "compared": int(ok.sum()),
            "violations": int(np.sum(found < targeted * (1 - 1e-4))),
            "ratio_median": float(np.median(ratio)), "ratio_p10": float(np.quantile(ratio, 0.1)),
            "ratio_p90": float(np.quantile(ratio, 0.9)), "ratio_min": float(ratio.min()),
            "mean_found_l2": float(found.mean()), "mean_certified_l2": float(targeted.mean()),
            "mean_untargeted_certified_l2": float(untargeted.mean()), "_ratio": ratio}
