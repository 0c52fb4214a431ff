"""Certified lower bounds on the minimum adversarial perturbation, by bound propagation through any JAX model.

``certified_radius(logits_fn, images, labels)`` finds, per image, the largest ε (by bisection) for which
the bound proves that no perturbation δ with ‖δ‖ ≤ ε (L2 or L∞) and x + δ in [0, 1] changes the label
(or, with ``targets``, makes the target win). Three methods, read off the model's jaxpr:

- ``"ibp"``: interval bound propagation (Gowal et al. 2018): each value's elementwise interval, linear
  layers through |W|, monotone functions (ReLU, sigmoid, tanh, max-pooling) at the interval's ends.
- ``"crown"``: backward linear bound propagation (Zhang et al., NeurIPS 2018; Fast-Lin, Weng et al. 2018)
  for networks that alternate affine maps (dense, convolutions, average pooling, reshapes — any linear
  primitive, materialised as a matrix by ``jax.jacfwd``) and elementwise activations: ReLU (the adaptive
  CROWN relaxation), sigmoid and tanh (parallel-chord bounds, exact extrema of σ(z) − k·z on [l, u]).
  Each layer's pre-activation bounds come from a backward pass to the input; the specification
  (z_label − z_j) is folded into the last layer, so its correlations are kept.
- ``"alpha-crown"``: CROWN with the last pass's relaxation slopes optimised per specification row by
  projected gradient ascent (Xu et al., ICLR 2021), from CROWN's radius upward.

Each linear bound a·x' + c is minimised exactly over the ball ∩ [0, 1]: for L∞ coordinate-wise, for L2
by the Lagrange dual (a lower bound at every multiplier; at the best one, the exact minimum). The box
matters for images: a pixel at 0 can only grow. Max-pooling has a sound interval rule (``"ibp"``) but no
linear relaxation here: ``"crown"`` raises for it, as for any primitive it does not know, naming the
primitive. Bounds are computed in float64 (soundness against rounding), jitted and batched over images
(in blocks whose memory is bounded whatever the number of images).

References: Gowal et al. 2018 (IBP); Zhang et al. 2018 (CROWN); Weng et al. 2018 (Fast-Lin); Xu et al. 2021
(α-CROWN); Szegedy et al. 2014, Sec. 4.3 (the product of per-layer Lipschitz constants, ``spectral``,
which these bounds tighten).
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.extend import core as jcore

from intriguing_jax import validate

METHODS = ("ibp", "crown", "alpha-crown")
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
    return {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": lambda v: jnp.maximum(v, 0)}[kind](z)


def _derivative(kind, z):
    s = _sigma(kind, z)
    return s * (1 - s) if kind == "sigmoid" else 1 - s ** 2


def _stationary(kind, k) -> list:
    """Points where σ'(z) = k (σ' ≤ 1/4 for sigmoid, ≤ 1 for tanh)."""
    if kind == "sigmoid":
        disc = jnp.sqrt(jnp.clip(1 - 4 * k, 0, None))
        out = []
        for s in ((1 + disc) / 2, (1 - disc) / 2):
            s = jnp.clip(s, 1e-15, 1 - 1e-15)
            out.append(jnp.log(s / (1 - s)))
        return out
    t = jnp.sqrt(jnp.clip(1 - k, 0, 1 - 1e-15))
    return [jnp.arctanh(t), -jnp.arctanh(t)]


def _intercept(kind, lo, hi, k, lowest: bool):
    """The exact min (``lowest``) or max of σ(z) − k·z over [lo, hi]: the intercept of the tightest line of
    slope ``k`` below (above) σ there. The candidates are the ends and the points where σ' = k; they are
    held constant under differentiation, so the gradient in ``k`` is −z* (the envelope theorem)."""
    lo, hi, k = jnp.broadcast_arrays(lo, hi, k)
    vals = []
    for z in [lo, hi] + _stationary(kind, k):
        z = jax.lax.stop_gradient(z)
        inside = (z >= lo) & (z <= hi)
        zc = jnp.clip(z, lo, hi)
        vals.append(jnp.where(inside, _sigma(kind, zc) - k * zc, jnp.inf if lowest else -jnp.inf))
    return jnp.min(jnp.stack(vals), 0) if lowest else jnp.max(jnp.stack(vals), 0)


def slope_range(kind: str, lo, hi):
    """The slopes ``[0, k_max]`` searched by ``"alpha-crown"`` for the lines bounding σ on [lo, hi]: ReLU's
    lower line (its upper line is fixed: the chord is the tightest), σ's lower and upper lines (``k_max``:
    σ's steepest slope on the interval)."""
    if kind == "relu":
        return jnp.ones_like(lo)
    return _derivative(kind, jnp.clip(0.0, lo, hi))


def relaxation(kind: str, lo, hi, slopes=None):
    """Linear bounds ``a_l·z + c_l ≤ σ(z) ≤ a_u·z + c_u`` on ``[lo, hi]``, elementwise (float64 when x64
    is on). Each is sound for any slopes: ``slopes=(k_l, k_u)`` chooses them (``"alpha-crown"``: ReLU's
    lower slope in [0, 1], σ's in [0, k_max]); None, CROWN's: ReLU adaptive (the lower line 0 or z,
    whichever is closer), σ's parallel chords. Every intercept is the exact extremum of σ(z) − k·z on
    [lo, hi], less (more) 1e-9 against rounding."""
    if kind == "relu":
        active, dead = lo >= 0, hi <= 0
        cross = ~active & ~dead
        width = jnp.where(cross, hi - lo, 1.0)
        a_u = jnp.where(active, 1.0, jnp.where(dead, 0.0, hi / width))
        c_u = jnp.where(cross, -lo * hi / width, 0.0)
        alpha = (hi > -lo).astype(lo.dtype) if slopes is None else jnp.clip(slopes[0], 0.0, 1.0)
        a_l = jnp.where(active, 1.0, jnp.where(dead, 0.0, alpha))
        return a_l, jnp.zeros_like(a_l), a_u, c_u
    if slopes is None:
        width = jnp.maximum(hi - lo, 1e-12)
        chord = jnp.where(hi - lo > 1e-12, (_sigma(kind, hi) - _sigma(kind, lo)) / width, _derivative(kind, lo))
        slopes = (chord, chord)
    k_l, k_u = slopes
    return k_l, _intercept(kind, lo, hi, k_l, True) - 1e-9, k_u, _intercept(kind, lo, hi, k_u, False) + 1e-9


# ---- bounds -------------------------------------------------------------------------------------------


def _concretize(a, c, x, eps, norm, box):
    """Min and max of ``a·x' + c`` (rows of ``a``) over x' in the ball of radius ``eps`` around ``x`` (and
    the box, exactly for L∞)."""
    center = a @ x + c
    if norm == 2:
        lo, hi = box[0] - x, box[1] - x
        return center + _l2_box_min(a, lo, hi, eps), center - _l2_box_min(-a, lo, hi, eps)
    lo, hi = jnp.maximum(x - eps, box[0]) - x, jnp.minimum(x + eps, box[1]) - x
    return center + jnp.minimum(a * lo, a * hi).sum(-1), center + jnp.maximum(a * lo, a * hi).sum(-1)


def _l2_box_min(a, lo, hi, eps, iters: int = 20):
    """A lower bound (tight to float precision) of min a·δ over ‖δ‖₂ ≤ eps, lo ≤ δ ≤ hi (lo ≤ 0 ≤ hi), per
    row of ``a``: the Lagrange dual g(λ) = Σᵢ min over [loᵢ, hiᵢ] of (aᵢδᵢ + λδᵢ²) − λ·eps², a lower bound
    for every λ ≥ 0 (weak duality), at the λ where the minimiser clip(−a/2λ, lo, hi) has norm eps (found by
    bisection on log λ), and at λ = 0 (the box alone)."""
    def dual(lam):
        # a zero coefficient's minimiser is 0 (not −0/0 = NaN once λ underflows: a row that does not depend
        # on the input, e.g. a margin that is a constant, would otherwise prove nothing)
        delta = jnp.clip(jnp.where(a == 0, 0.0, -a / (2 * lam[..., None])), lo, hi)
        return (a * delta + lam[..., None] * delta ** 2).sum(-1) - lam * eps ** 2, jnp.linalg.norm(delta, axis=-1)
    top = jnp.log(jnp.linalg.norm(a, axis=-1) / (2 * jnp.maximum(eps, 1e-12)) + 1e-300)  # the ball alone: norm = eps
    def step(bracket, _):
        low, high = bracket
        mid = 0.5 * (low + high)
        inside = dual(jnp.exp(mid))[1] <= eps  # the norm falls as λ grows
        return (jnp.where(inside, low, mid), jnp.where(inside, mid, high)), None
    (low, high), _ = jax.lax.scan(step, (top - 46.0, top), None, length=iters)
    box_only = jnp.minimum(a * lo, a * hi).sum(-1)
    return jnp.maximum(jnp.maximum(dual(jnp.exp(low))[0], dual(jnp.exp(high))[0]), box_only)


def _backward(net, pre, layer, lin, lower: bool, slopes=None):
    """The linear bound ``lin @ z_layer`` pushed back to the input: ``(a, c)`` with ``a·x + c`` a lower (or
    upper) bound of it, given the hidden layers' pre-activation bounds ``pre`` and, optionally, the
    relaxations' slopes per hidden layer (each broadcasting against ``lin``'s rows)."""
    a, c = lin, jnp.zeros(lin.shape[:-1], lin.dtype)
    for k in range(layer, 0, -1):
        c = c + a @ net.biases[k]
        a = a @ net.weights[k]  # now a bound in terms of the activation a_k = σ(z_k)
        lo, hi = pre[k - 1]
        a_l, c_l, a_u, c_u = relaxation(net.activations[k - 1], lo, hi, None if slopes is None else slopes[k - 1])
        pos, neg = jnp.maximum(a, 0), jnp.minimum(a, 0)
        if lower:
            c, a = c + (pos * c_l + neg * c_u).sum(-1), pos * a_l + neg * a_u
        else:
            c, a = c + (pos * c_u + neg * c_l).sum(-1), pos * a_u + neg * a_l
    return a @ net.weights[0], c + a @ net.biases[0]


def _pre_activation_bounds(net, x, eps, norm, box) -> list:
    """CROWN's bounds on every hidden pre-activation, layer by layer (each pass uses the ones below)."""
    pre = []
    for k in range(len(net.weights) - 1):
        eye = jnp.eye(net.weights[k].shape[0], dtype=x.dtype)
        lo = _concretize(*_backward(net, pre, k, eye, True), x, eps, norm, box)[0]
        hi = _concretize(*_backward(net, pre, k, eye, False), x, eps, norm, box)[1]
        pre.append((lo, hi))
    return pre


def _spec_lower(net, pre, x, spec, eps, norm, box, slopes=None):
    a, c = _backward(net, pre, len(net.weights) - 1, spec, True, slopes)
    return _concretize(a, c, x, eps, norm, box)[0]


def _crown_one(net, x, spec, eps, norm, box):
    return _spec_lower(net, _pre_activation_bounds(net, x, eps, norm, box), x, spec, eps, norm, box)


def _alpha_one(net, x, spec, eps, t0, norm, box, steps, lr):
    """α-CROWN's last pass (Xu et al. 2021): the relaxation slopes of every hidden unit, one set per
    specification row, chosen by projected Adam on the lower bound (the pre-activation bounds stay
    CROWN's). Every slope gives a sound bound: the best bound seen is kept. ``t0``: the slopes as shares
    of their range (NaN: start from CROWN's); returns ``(lower [S], t)``."""
    pre = _pre_activation_bounds(net, x, eps, norm, box)
    kmax = [slope_range(kind, lo, hi) for kind, (lo, hi) in zip(net.activations, pre)]
    crown = [relaxation(kind, lo, hi) for kind, (lo, hi) in zip(net.activations, pre)]
    start = [(jnp.broadcast_to(jnp.clip(r[0] / jnp.maximum(m, 1e-30), 0, 1), (len(spec),) + m.shape),
              jnp.broadcast_to(jnp.clip(r[2] / jnp.maximum(m, 1e-30), 0, 1), (len(spec),) + m.shape))
             for r, m in zip(crown, kmax)]
    t0 = jax.tree.map(lambda s, t: jnp.where(jnp.isnan(t), s, t), start, t0)

    def bound(t):
        slopes = [(tl * m, tu * m) for (tl, tu), m in zip(t, kmax)]
        return _spec_lower(net, pre, x, spec, eps, norm, box, slopes)

    opt = optax.adam(lr)

    def step(carry, _):
        t, state, best = carry
        value, pull = jax.vjp(bound, t)
        grad = pull(-jnp.ones_like(value))[0]  # ascend every row's bound (rows have their own slopes)
        update, state = opt.update(grad, state)
        t = jax.tree.map(lambda a: jnp.clip(a, 0.0, 1.0), optax.apply_updates(t, update))
        return (t, state, jnp.maximum(best, value)), None

    best0 = bound(t0)
    (t, _, best), _ = jax.lax.scan(step, (t0, opt.init(t0), best0), None, length=steps)
    return jnp.maximum(best, bound(t)), t


@functools.partial(jax.jit, static_argnames=("acts", "norm", "box"))
def _crown_batch(weights, biases, acts, xs, specs, eps, norm, box):
    net = Network(weights, biases, acts)
    return jax.vmap(lambda x, s, e: _crown_one(net, x, s, e, norm, box))(xs, specs, eps)


@functools.partial(jax.jit, static_argnames=("acts", "norm", "box", "steps"))
def _alpha_batch(weights, biases, acts, xs, specs, eps, t0, norm, box, steps, lr):
    net = Network(weights, biases, acts)
    return jax.vmap(lambda x, s, e, t: _alpha_one(net, x, s, e, t, norm, box, steps, lr))(xs, specs, eps, t0)


def crown_lower(net: Network, x: np.ndarray, spec: np.ndarray, eps: float, norm=2, box=(0.0, 1.0)) -> np.ndarray:
    """Lower bounds of ``spec @ logits(x')`` (rows of ``spec [S, K]``) over the ball: CROWN, float64."""
    with jax.enable_x64(True):
        w, b = _wide(net)
        out = _crown_batch(w, b, tuple(net.activations), jnp.asarray(x, jnp.float64)[None],
                           jnp.asarray(spec, jnp.float64)[None], jnp.asarray([eps], jnp.float64), norm, tuple(box))
        return np.asarray(out[0])


def _wide(net: Network):
    return (tuple(jnp.asarray(w, jnp.float64) for w in net.weights), tuple(jnp.asarray(b, jnp.float64) for b in net.biases))


def _ibp_program(logits_fn: Callable, input_shape) -> Callable:
    """Interval propagation through the model's jaxpr, traced once: a jitted, vmapped function of the
    input intervals ``(lo [B, D], hi [B, D])`` (float64) returning the logits' ``(lo [B, K], hi [B, K])``."""
    d = int(np.prod(input_shape))
    closed = jax.make_jaxpr(_flat_fn(logits_fn, input_shape))(jnp.zeros((d,), jnp.float32))
    consts = [np.asarray(c, np.float64) if hasattr(c, "dtype") else c for c in closed.consts]

    def one(lo, hi):
        return _interval_run(closed.jaxpr, consts, [(lo, hi)])[0]
    return jax.jit(jax.vmap(one))


def _ibp_box(x, eps, norm, box):
    """The input interval of each image: its ball's bounding box (L2 and L∞ alike) ∩ the pixel box."""
    return np.maximum(x - eps[:, None], box[0]), np.minimum(x + eps[:, None], box[1])


def ibp_lower(logits_fn: Callable, input_shape, x: np.ndarray, spec: np.ndarray, eps: float, norm=2,
              box=(0.0, 1.0)) -> np.ndarray:
    """Lower bounds of ``spec @ logits(x')`` by interval propagation through the model's jaxpr (an L2 ball
    enters as its bounding box ∩ the pixel box), for one flat image ``x [D]``."""
    with jax.enable_x64(True):
        lo, hi = _ibp_box(np.asarray(x, np.float64)[None], np.array([eps], np.float64), norm, box)
        out_lo, out_hi = (np.asarray(a)[0] for a in _ibp_program(logits_fn, input_shape)(lo, hi))
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


def _bisect(proves, lo, hi, eps_max: float, tol: float) -> np.ndarray:
    """Per image, the largest ε in [lo, eps_max] with ``proves`` (``eps [N] -> bool [N]``, evaluated for all
    images at once), to ``tol`` relative; ``lo`` must be proven (0 is checked). The upper end ``hi``
    doubles while it is proven."""
    lo, hi = np.asarray(lo, np.float64).copy(), np.minimum(np.asarray(hi, np.float64), eps_max)
    ok = proves(lo)
    while True:  # grow the upper end until it fails (or reaches eps_max)
        grow = ok & (hi > lo) & proves(hi)
        lo = np.where(grow, hi, lo)
        if not np.any(grow & (hi < eps_max)):
            break
        hi = np.where(grow, np.minimum(2 * hi, eps_max), hi)
    hi = np.maximum(hi, lo)
    while True:
        active = ok & (hi - lo > tol * np.maximum(lo, 1e-6)) & (hi - lo > 1e-9)
        if not active.any():
            return np.where(ok, lo, 0.0)
        mid = np.where(active, 0.5 * (lo + hi), lo)
        p = proves(mid)
        lo, hi = np.where(active & p, mid, lo), np.where(active & ~p, mid, hi)


def _chunks(n: int, size: int):
    """Index blocks of ``size`` covering ``range(n)``, the last padded by repeating its last index (every
    block has one shape: one compilation)."""
    for s in range(0, n, size):
        idx = np.arange(s, min(s + size, n))
        yield idx, np.pad(idx, (0, size - len(idx)), mode="edge")


def _chunk_size(net: Network, budget: int = 1 << 25) -> int:
    """Images bounded at once: the backward passes hold about ``width × max(width, D)`` numbers per image."""
    widths = [w.shape[0] for w in net.weights[:-1]] or [1]
    return max(1, budget // (max(widths) * max(widths + [net.weights[0].shape[1]])))


def certified_radius(logits_fn: Callable, images, labels, *, targets=None, norm=2, method: str = "crown",
                     box=(0.0, 1.0), eps_max: float | None = None, tol: float = 1e-3, steps: int = 20,
                     lr: float = 0.01) -> np.ndarray:
    """Per image, the largest ε (within ``tol`` relative, by bisection) for which ``method`` proves the label
    cannot change (``targets`` None) or the target cannot win (``z_label > z_target``) for any δ with
    ‖δ‖_norm ≤ ε and x + δ in the box. 0 where even the clean image fails the check.

    Args:
      logits_fn: ``[N, ...] -> [N, K]``, any JAX function (``"crown"``, ``"alpha-crown"``: affine layers
        and elementwise ReLU/sigmoid/tanh; ``"ibp"``: also max-pooling); unsupported primitives raise
        ``Unsupported``.
      images: ``[N, ...]`` in the box; labels: ``[N]`` the labels to certify (e.g. the model's predictions).
      targets: ``[N]`` or None. norm: ``2`` or ``np.inf``.
      method: ``"ibp"``; ``"crown"``; or ``"alpha-crown"``: CROWN's radius, then a bisection above it
        with the last pass's relaxation slopes optimised at each ε (``steps`` Adam steps of rate ``lr``,
        warm-started from the previous ε), never below CROWN's.
      eps_max: the largest radius tried (None: √D for L2, 1 for L∞). tol: relative precision.

    Returns:
      ``[N]`` float64 certified radii: sound lower bounds on the minimum adversarial perturbation. A radius
      that reaches ``eps_max`` is the search's limit, and a ``CertificateAtLimit`` warning says how many.

    Raises:
      ValueError: images not a finite float batch inside ``box`` (the box assumed is named), labels or
        targets of the wrong shape, dtype or range, targets equal to labels, NaN/inf logits at the images.
      Unsupported: a primitive the method cannot bound.

    References:
      Gowal et al. 2018 (IBP); Zhang et al., NeurIPS 2018 (CROWN); Xu et al., ICLR 2021 (α-CROWN).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be 2 or np.inf, got {norm!r}")
    if len(box) != 2 or not box[0] < box[1]:
        raise ValueError(f"box must be (low, high) with low < high, got {box!r}")
    if eps_max is not None and not eps_max > 0:
        raise ValueError(f"eps_max must be positive, got {eps_max!r}")
    # an image outside the box has no valid point in any ball around it: every radius would be "certified"
    n = validate.images(images, box=box)
    k = validate.logits_fn(logits_fn, images)
    validate.labels(labels, n, k)
    if targets is not None:
        validate.labels(targets, n, k, name="targets")
        if np.any(np.asarray(targets) == np.asarray(labels)):
            i = int(np.flatnonzero(np.asarray(targets) == np.asarray(labels))[0])
            raise ValueError(f"targets must differ from labels (the label to certify); equal at image {i}")
    validate.finite_logits(logits_fn, images)
    images = np.asarray(images, np.float64)
    labels = np.asarray(labels)
    shape = images.shape[1:]
    d = int(np.prod(shape))
    xs = images.reshape(len(images), d)
    specs = np.stack([_spec(int(y), None if targets is None else int(targets[i]), k) for i, y in enumerate(labels)])
    eps_max = float(eps_max or (np.sqrt(d) if norm == 2 else 1.0))
    radius = _certified(logits_fn, xs, specs, shape, norm, method, box, eps_max, tol, steps, lr)
    capped = radius >= eps_max * (1 - tol)
    if capped.any():
        warnings.warn(f"{int(capped.sum())} of {len(radius)} image(s) are certified up to eps_max = {eps_max:g}, the "
                      f"largest radius tried (box {tuple(box)}): a lower bound at the search's limit, not a measured "
                      "radius; raise eps_max to search further", CertificateAtLimit, stacklevel=2)
    return radius


class CertificateAtLimit(UserWarning):
    """``certified_radius`` reached ``eps_max``: the radius is the search's limit, not a measured value."""


def _certified(logits_fn, xs, specs, shape, norm, method, box, eps_max, tol, steps, lr) -> np.ndarray:
    """``certified_radius`` on validated, flattened float64 images ``xs [N, D]`` and their specs."""
    start = np.zeros(len(xs))
    if method == "ibp":
        size = max(1, min(len(xs), (1 << 22) // max(xs.shape[1], 1)))  # images bounded at once
        with jax.enable_x64(True):
            program = _ibp_program(logits_fn, shape)
            pos, neg = np.maximum(specs, 0), np.minimum(specs, 0)

            def proves(eps):
                out = []
                for idx, pad in _chunks(len(xs), size):
                    lo, hi = _ibp_box(xs[pad], eps[pad], norm, box)
                    z_lo, z_hi = (np.asarray(a)[: len(idx)] for a in program(lo, hi))
                    out.append(np.einsum("njk,nk->nj", pos[idx], z_lo) + np.einsum("njk,nk->nj", neg[idx], z_hi))
                return np.all(np.concatenate(out) > 0, axis=1)
            return _bisect(proves, start, np.full(len(xs), eps_max), eps_max, tol)
    net = read_network(logits_fn, shape)
    size = min(_chunk_size(net), max(len(xs), 1))
    with jax.enable_x64(True):
        w, b = _wide(net)
        acts, box = tuple(net.activations), tuple(float(v) for v in box)

        def batched(fn, eps, *extra):
            outs = []
            for idx, pad in _chunks(len(xs), size):
                out = fn(jnp.asarray(xs[pad]), jnp.asarray(specs[pad]), jnp.asarray(eps[pad], jnp.float64),
                         *[jax.tree.map(lambda a: a[pad], e) for e in extra])
                outs.append(jax.tree.map(lambda a: np.asarray(a)[: len(idx)], out))
            return jax.tree.map(lambda *a: np.concatenate(a), *outs)

        def crown_proves(eps):
            return np.all(batched(lambda x, s, e: _crown_batch(w, b, acts, x, s, e, norm, box), eps) > 0, axis=1)

        radius = _bisect(crown_proves, start, np.full(len(xs), eps_max / 16), eps_max, tol)
        if method == "crown" or not len(xs):
            return radius
        dims = [w_.shape[0] for w_ in net.weights[:-1]]
        state = {"t": [(np.full((len(xs), specs.shape[1], n), np.nan),) * 2 for n in dims]}

        def alpha_proves(eps):
            lower, state["t"] = batched(lambda x, s, e, t: _alpha_batch(w, b, acts, x, s, e, t, norm, box, steps, lr),
                                        eps, state["t"])
            return np.all(lower > 0, axis=1) | (eps <= radius)  # CROWN's radius is proven already

        better = _bisect(alpha_proves, radius, np.minimum(2 * radius, eps_max), eps_max, tol)
        return np.where(radius > 0, np.maximum(better, radius), 0.0)


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
    if not ok.any():
        raise ValueError("no successful attack to compare with (every example failed or was already its target)")
    targeted = certified_radius(logits_fn, images[ok], pred[ok], targets=target[ok], norm=norm, method=method)
    untargeted = certified_radius(logits_fn, images[ok], pred[ok], norm=norm, method=method)
    found = np.asarray(result.l2, np.float64)[ok]
    with np.errstate(divide="ignore"):
        ratio = found / targeted
    return {"method": method, "norm": "L2" if norm == 2 else "Linf", "images": int(len(ok)), "compared": int(ok.sum()),
            "violations": int(np.sum(found < targeted * (1 - 1e-4))),
            "ratio_median": float(np.median(ratio)), "ratio_p10": float(np.quantile(ratio, 0.1)),
            "ratio_p90": float(np.quantile(ratio, 0.9)), "ratio_min": float(ratio.min()),
            "mean_found_l2": float(found.mean()), "mean_certified_l2": float(targeted.mean()),
            "mean_untargeted_certified_l2": float(untargeted.mean()), "_ratio": ratio}
