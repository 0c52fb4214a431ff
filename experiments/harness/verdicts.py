"""The rule behind each verdict on a paper claim, as a pure function of a summary dict.

Each function takes the numbers a claim rests on (a dict the pipeline computed and stored in its JSON)
and returns a ``Verdict``: whether the claim holds under the stated rule, the numbers used, and the
sentence the report prints. Tests can check every rule on hand-made summaries.

References: Szegedy et al. 2014 (the claims); ``paper`` (the numbers, each with how sure it is).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from experiments.harness import paper
from experiments.harness.report import pct, table


class Verdict(NamedTuple):
    """One claim's verdict. ``holds`` is None for an observation (or when no verdict can be made)."""

    claim: str
    holds: bool | None
    detail: str
    numbers: dict

    def markdown(self) -> str:
        if self.holds is None:
            return f"**{self.claim}{'' if self.claim.endswith(('?', '.')) else '.'}** {self.detail}"
        return f"**{self.claim}: {'holds' if self.holds else 'does not hold'}.** {self.detail}"


def bullets(verdicts) -> str:
    """Markdown bullet list of verdicts (None entries skipped)."""
    return "\n".join(f"- {v.markdown()}" for v in verdicts if v is not None)


# ---- Table 1 -------------------------------------------------------------------------------------


def _paper_d(names) -> list[float]:
    """The paper's average minimum distortion (Table 1, ``paper.TABLE1``) of the named models it lists."""
    return [paper.TABLE1[n][2] for n in names if n in paper.TABLE1]


def blind_spots(rows: dict) -> Verdict:
    """Every model is driven to its target on every image by small distortions (RMS < 0.15).

    Args:
      rows: model -> {"success_rate", "mean_distortion"}.
    """
    worst = min(r["success_rate"] for r in rows.values())
    d = [r["mean_distortion"] for r in rows.values() if r["mean_distortion"] is not None]
    if not d:
        return Verdict("Every model has blind spots", False, f"The attack reached its target on {pct(worst, 1)} "
                       "of the images for the worst model: no successful attack to measure (rule: 100% success and "
                       "mean distortion < 0.15).", {"worst_success_rate": worst})
    holds = bool(worst == 1.0 and max(d) < 0.15)
    return Verdict("Every model has blind spots", holds,
                   f"The attack reached its random wrong target on {pct(worst, 1)} of the images for the worst "
                   f"model; mean distortion {min(d):.3f}–{max(d):.3f} RMS per pixel (paper {min(_paper_d(rows)):g}–"
                   f"{max(_paper_d(rows)):g}). Rule: "
                   "100% success on every model and every mean distortion < 0.15.",
                   {"worst_success_rate": worst, "min_distortion": min(d), "max_distortion": max(d)})


def weight_decay_order(rows: dict) -> Verdict | None:
    """FC10 distortions grow with weight decay (1e-4 < 1e-2 < 1); None unless all three rows are there."""
    fc = [n for n in ("FC10(1e-4)", "FC10(1e-2)", "FC10(1)") if n in rows]
    if len(fc) < 3:
        return None
    ds = [rows[n]["mean_distortion"] for n in fc]
    return Verdict("More weight decay needs larger distortions (FC10)", bool(ds[0] < ds[1] < ds[2]),
                   f"{', '.join(f'{n} {v:.3f}' for n, v in zip(fc, ds))}; paper {' < '.join(f'{v:g}' for v in _paper_d(fc))}. "
                   "Rule: the mean "
                   "distortion strictly increases with λ.", dict(zip(fc, ds)))


# ---- Table 2 -------------------------------------------------------------------------------------


def cross_model_transfer(summary: dict) -> Verdict | None:
    """Adversarial examples fool other models at ≥ 2× (and ≥ 5 points over) the rate of noise of each
    image's adversarial RMS. ``summary``: ``transfer.cross_model_summary``."""
    a, n = summary["adversarial_off_diagonal"], summary["matched_noise_off_diagonal"]
    if a is None:
        return None
    return Verdict("Adversarial examples transfer across models far more than noise of the same size",
                   bool(a >= 2 * n and a - n >= 0.05),
                   f"Mean error of the other models on a row's adversarial examples {pct(a, 1)} vs {pct(n, 1)} "
                   f"on Gaussian noise with each image's adversarial RMS ({a / max(n, 1e-9):.1f}×; rule: ≥ 2× "
                   "and ≥ 5 points).", {"adversarial": a, "matched_noise": n})


def noise_barely_hurts(summary: dict) -> Verdict:
    """Gaussian noise raises no model's error by more than 2 points over its clean error, judged on
    unclipped noise (the paper's reading: its distortion column equals the stddev), with clipped noise
    (a valid image) reported beside it.

    Args:
      summary: {"stddev", "clean_error": {model: e}, "noisy_error": {model: e} (unclipped), and
        optionally "clipped_error": {model: e}}.
    """
    clean, noisy, clipped = summary["clean_error"], summary["noisy_error"], summary.get("clipped_error")
    rise = {c: noisy[c] - clean[c] for c in clean}
    worst = max(rise, key=rise.get)
    holds = bool(rise[worst] <= 0.02)
    beside = ""
    if clipped:
        c_rise = {c: clipped[c] - clean[c] for c in clean}
        c_worst = max(c_rise, key=c_rise.get)
        beside = (f" Clipped to [0, 1] (lower realised RMS): largest rise {c_worst} {pct(clean[c_worst], 1)} → "
                  f"{pct(clipped[c_worst], 1)}.")
    return Verdict(f"Gaussian noise of stddev {summary['stddev']:g} barely changes the error", holds,
                   f"Rule: every model within +2 points of its clean error on the same images, unclipped noise. "
                   f"Largest rise: {worst} {pct(clean[worst], 1)} → {pct(noisy[worst], 1)}." + beside,
                   {"largest_rise": rise[worst], "model": worst})


def fig7(summary: dict) -> Verdict:
    """Adversarial images (small RMS) are misclassified far more often than heavily noised ones (judged on
    unclipped noise, clipped beside it)."""
    f = summary
    return Verdict("Fig. 7: adversarial images are closer yet always wrong, heavy noise is not",
                   bool(f["adversarial"] < f["gaussian_unclipped"]),
                   f"{f['model']} accuracy {pct(f['adversarial'], 1)} on adversarial images (RMS "
                   f"{f['adversarial_rms']:.3f}) vs {pct(f['gaussian_unclipped'], 1)} under Gaussian noise stddev "
                   f"{f['stddev']:g} ({pct(f['gaussian_clipped'], 1)} clipped to [0, 1], RMS "
                   f"{f['gaussian_clipped_rms']:.3f}; paper: 0% vs 51%). Rule: accuracy on the adversarial "
                   "images below accuracy under unclipped noise.",
                   {k: f[k] for k in ("adversarial", "gaussian_clipped", "gaussian_unclipped")})


# ---- Tables 3-4 ----------------------------------------------------------------------------------


def cross_training_transfer(s: dict) -> Verdict:
    """Examples made for a model fool one trained on the other half at ≥ 2× (and ≥ 2 points over) the
    larger noise control. ``s``: ``transfer.cross_training_summary``."""
    a, g, mt = s["adv_other_set"], s["gaussian_006"], s["matched_other_set"]
    control = max(g, mt, s.get("gaussian_006_clipped", 0.0))
    return Verdict("Adversarial examples transfer to a model trained on the other half of the data",
                   bool(a >= 2 * control and a - control >= 0.02),
                   f"Error of a model trained on the other half {pct(a, 1)} vs {pct(g, 1)} under Gaussian noise "
                   f"stddev 0.06 ({pct(s.get('gaussian_006_clipped'), 1)} clipped) and {pct(mt, 1)} under noise "
                   "matched to each image's adversarial RMS (rule: ≥ 2× the largest control and ≥ 2 points; paper "
                   "5.1–8.2% vs 2.2–2.6%). Same half, other "
                   f"architecture: {pct(s['adv_same_set_other_model'], 1)}.",
                   {"adversarial": a, "gaussian": g, "matched_noise": mt})


def magnified_transfer(s: dict, rms: float) -> Verdict:
    """Magnified to RMS ``rms``, other-half error ≥ 2× (and ≥ 5 points over) Gaussian noise stddev 0.1."""
    mg, g1 = s["magnified_other_set"], s["gaussian_01"]
    return Verdict(f"Magnified to RMS {rms:g}, they transfer much more than noise of that size",
                   bool(mg >= 2 * g1 and mg - g1 >= 0.05),
                   f"Other-half error {pct(mg, 1)} vs {pct(g1, 1)} under Gaussian noise stddev 0.1, unclipped (RMS 0.1; "
                   f"{pct(s.get('gaussian_01_clipped'), 1)} clipped) (rule: ≥ 2× and ≥ 5 points; paper 22–50% vs "
                   "2.6–2.8%).", {"magnified": mg, "gaussian": g1})


# ---- units ---------------------------------------------------------------------------------------


def _relation(x: dict) -> str:
    if x["ci_low"] <= 0 <= x["ci_high"] or abs(x["cohens_d"]) < 0.2:
        return "are not distinguishable from"
    return "are more coherent than" if x["difference"] > 0 else "are less coherent than"


def units_like_random(name: str, r: dict) -> Verdict:
    """Units are no more interpretable than random directions: fails only if live units' label purity
    beats random directions' (bootstrap CI above 0 and Cohen's d ≥ 0.2), and only judged when random
    directions of the trained layer beat every floor (CI above 0, p < 0.01).

    Args:
      name: the model; r: its ``units.analyse`` result (``comparisons``, ``layer``, ``k``, ``dead_units``).
    """
    c = r["comparisons"]
    uv, live = c["units vs random"]["purity"], c["live units vs random"]["purity"]
    floors = [c[f]["purity"] for f in c if "floor" in f]
    floor_diffs = ", ".join(f"{f['difference']:+.3f}" for f in floors)
    if not all(f["ci_low"] > 0 and f["p_value"] < 0.01 for f in floors):
        return Verdict(f"{name}: the score cannot separate the trained layer from its floors, so no verdict", None,
                       f"Floor differences: {floor_diffs}.", {"floor_differences": floor_diffs})
    holds = not (live["ci_low"] > 0 and live["cohens_d"] >= 0.2)
    return Verdict(
        f"{name} ({r['layer']}): units are no more interpretable than random directions (paper [text])", holds,
        f"Label purity of the top-{r['k']} sets: all units {uv['mean_a']:.3f} vs random directions "
        f"{uv['mean_b']:.3f} (difference {uv['difference']:+.3f}, 95% CI {uv['ci_low']:+.3f} to {uv['ci_high']:+.3f}, "
        f"permutation p = {uv['p_value']:.2g}, d = {uv['cohens_d']:+.2f}: units {_relation(uv)} random directions); "
        f"without the {r['dead_units']} constant (dead) units {live['mean_a']:.3f} (difference "
        f"{live['difference']:+.3f}, CI {live['ci_low']:+.3f} to {live['ci_high']:+.3f}, d = {live['cohens_d']:+.2f}: "
        f"live units {_relation(live)} random directions). Rule: indistinguishable if the CI covers 0 or |d| < 0.2; "
        "the claim fails only if live units are more coherent. The score can tell: random directions of the "
        f"trained layer beat every floor ({floor_diffs} purity, all p < 0.01).",
        {"units_minus_random": uv["difference"], "live_minus_random": live["difference"]})


# ---- spectral ------------------------------------------------------------------------------------


def certified_below_found(sandwich: dict) -> Verdict | None:
    """No certified lower bound exceeds a distortion the attack found (a sanity check of both)."""
    if not sandwich:
        return None
    worst = min(v["ratio_min"] for v in sandwich.values())
    viol = sum(v["violations"] for v in sandwich.values())
    return Verdict("No certified lower bound exceeds a distortion the attack found", viol == 0,
                   f"{viol} violations over {sum(v['compared'] for v in sandwich.values())} attacked images; "
                   f"smallest ratio {worst:.3f}.", {"violations": viol, "smallest_ratio": worst})


def attack_tightness(sandwich: dict) -> Verdict | None:
    """Observation: how far the found distortions sit above the certified radii, linear models vs nets; on
    the linear models also the attack's ratio to the exact box-constrained minimum (``exact``, computed
    by the run), where present."""
    lin = [n for n in sandwich if n.startswith("FC10(")]
    deep = [n for n in sandwich if not n.startswith("FC10(")]
    if not (lin and deep):
        return None
    exact = {n: sandwich[n]["exact"] for n in lin if sandwich[n].get("exact", {}).get("images")}
    measured = ("; the attack's ‖r‖₂ over the exact box-constrained minimum (`exact.linear_minimum`, mean over "
                "the first images attacked): " + ", ".join(f"{n} {e['ratio_mean']:.4f}× ({e['images']} images)"
                                                           for n, e in exact.items())) if exact else ""
    return Verdict("How tight is the attack?", None,
                   "For the linear models the product bound is the exact minimum without the [0, 1] box, so the "
                   "ratio is the box's cost plus the attack's slack: median "
                   + ", ".join(f"{n} {sandwich[n]['ratio_median']:.3f}" for n in lin) + measured
                   + ". For the nets: median ratio "
                   + ", ".join(f"{n} {sandwich[n]['ratio_median']:.0f}×" for n in deep) + ". "
                   + _tightness_reading([sandwich[n]["ratio_median"] for n in lin],
                                        [sandwich[n]["ratio_median"] for n in deep]),
                   {**{n: sandwich[n]["ratio_median"] for n in sandwich},
                    **{f"{n} vs exact": e["ratio_mean"] for n, e in exact.items()}})


def bound_propagation_tight(rows: dict, limit: float = 3.0) -> Verdict | None:
    """Linear bound propagation brackets the minimum adversarial distance within ``limit``× on the nets.

    Rule: no violation on any model, and on every hidden-layer net (not FC10) the median found / CROWN
    radius is at most ``limit`` (CROWN is reported within 2–3× on small MNIST nets).
    """
    nets = [n for n in rows if not n.startswith("FC10(")]
    if not nets:
        return None
    viol = sum(r["violations"] for r in rows.values())
    holds = viol == 0 and all(rows[n]["ratio_median"] <= limit for n in nets)
    return Verdict(f"Bound propagation brackets the minimum distance within {limit:g}× on the nets", holds,
                   f"Rule: no violation and every net's median found / certified ≤ {limit:g}×. Median "
                   + ", ".join(f"{n} {rows[n]['ratio_median']:.2f}×" for n in nets) + f"; {viol} violation(s).",
                   {n: rows[n]["ratio_median"] for n in rows})


def _tightness_reading(linear: list[float], deep: list[float]) -> str:
    """Rule: where the exact minimum is known (linear models) the attack is tight if every median ratio is
    ≤ 1.5; the nets' gap is then put on the bound if every net's median exceeds 2× the largest linear one."""
    if max(linear) > 1.5:
        return "The attack is not tight on the linear models (median ratio > 1.5), so the nets' gap cannot be put on the bound."
    if min(deep) > 2 * max(linear):
        return ("The attack is tight where the exact minimum is known (median ≤ 1.5×) and the nets' ratios are "
                "over twice as large, so most of their gap is the product bound's looseness.")
    return "The nets' ratios are within 2× of the linear models': the bound is about as tight on both."


# ---- adversarial training ------------------------------------------------------------------------


def pools_beat_weight_decay(s: dict, seeds: int, on_mnist: bool = True) -> Verdict | None:
    """The paper's claim: pools improve clean test error over weight decay alone (1.6% → below 1.2%).

    Rule: the best pool variant's worst seed beats weight decay alone's best seed (non-overlapping spread).

    Args:
      s: variant -> {"test_error_mean", "test_error_min", "test_error_max", ...}
        (``adversarial_training.summarize_runs``), with "weight decay only" among them.
      seeds: how many seeds each mean is over.
      on_mnist: the runs are on MNIST, where the paper's error is a number to compare with (on another
        dataset it is not, and the verdict does not compare).
    """
    base = "weight decay only"
    pools = [v for v in s if v != base]
    if base not in s or not pools:
        return None
    w = s[base]
    best = min(pools, key=lambda v: s[v]["test_error_mean"])
    b = s[best]
    target = paper.ADVERSARIAL_TRAINING["with_pools_below"]
    holds = bool(b["test_error_max"] < w["test_error_min"])
    return Verdict(f"Adversarial training with per-layer pools improves on weight decay alone (paper [text]: "
                   f"{pct(paper.ADVERSARIAL_TRAINING['weight_decay_only'], 1)} → below {pct(target, 1)})", holds,
                   f"Rule: the best pool variant's worst seed beats weight decay alone's best seed. Best pool variant "
                   f"({best}): {pct(b['test_error_mean'])} (seeds {pct(b['test_error_min'])}–{pct(b['test_error_max'])}) "
                   f"vs {pct(w['test_error_mean'])} ({pct(w['test_error_min'])}–{pct(w['test_error_max'])}) with weight "
                   f"decay alone, {seeds} seeds" + (f"; the paper's {pct(target, 1)} is "
                   + ("reached." if b["test_error_mean"] < target else "not reached.") if on_mnist else "."),
                   {"best": best, "best_pools": b["test_error_mean"], "weight_decay_only": w["test_error_mean"]})


def higher_layers_more_useful(s: dict) -> Verdict | None:
    """Hidden-layer pools beat the input pool by more than the seeds' spread."""
    if "input pool" not in s or "hidden-layer pools" not in s:
        return None
    i, h = s["input pool"], s["hidden-layer pools"]
    margin = max(i["test_error_spread"], h["test_error_spread"])
    base = s.get("weight decay only", {}).get("test_error_mean")
    vs_base = "" if base is None else f"; weight decay alone: {pct(base)}"
    others = [v for v in s if v not in ("input pool", "hidden-layer pools", "weight decay only")]
    vs_base += "".join(f"; {v}: {pct(s[v]['test_error_mean'])}" for v in others)
    return Verdict("Higher layers' examples are more useful", bool(h["test_error_mean"] < i["test_error_mean"] - margin),
                   f"Rule: hidden-layer pools beat the input pool by more than the seeds' spread. Test error "
                   f"{pct(h['test_error_mean'])} with hidden-layer pools vs {pct(i['test_error_mean'])} with the input "
                   f"pool (spread ≤ {pct(margin)}){vs_base}.",
                   {"hidden": h["test_error_mean"], "input": i["test_error_mean"], "spread": margin})


def distortion_rises(s: dict) -> Verdict | None:
    """Each pool variant's mean minimum distortion against weight decay alone.

    Rule: the claim holds if every pool variant's mean distortion exceeds weight decay alone's by more
    than the larger of the two seed spreads; the detail gives each variant's ratio and its own reading.
    """
    base = "weight decay only"
    if base not in s or len(s) < 2:
        return None
    w = s[base]

    def reading(x):
        margin = max(x.get("distortion_spread", 0.0), w.get("distortion_spread", 0.0))
        diff = x["distortion_mean"] - w["distortion_mean"]
        return "higher" if diff > margin else "lower" if diff < -margin else "within the spread"

    rows = {v: (x["distortion_mean"] / w["distortion_mean"], reading(x)) for v, x in s.items() if v != base}
    holds = all(r == "higher" for _, r in rows.values())
    return Verdict("Adversarial training raises the distortion the attack needs", holds,
                   "Rule: every pool variant's mean distortion above weight decay alone's by more than the seeds' "
                   "spread. " + ", ".join(f"{v} {q:.2f}× ({r})" for v, (q, r) in rows.items())
                   + f" the weight-decay-only model's {w['distortion_mean']:.4f}.",
                   {v: float(np.round(q, 6)) for v, (q, _) in rows.items()})


# ---- the adversarial-training study's readings (observations, each by a rule that can go either way) ----


def seed_order(a: dict, b: dict) -> int:
    """−1 if every seed of ``a`` has a lower test error than every seed of ``b``, +1 if every one a higher,
    0 if their ranges overlap (each dict with ``test_error_min`` and ``test_error_max``)."""
    if a["test_error_max"] < b["test_error_min"]:
        return -1
    if a["test_error_min"] > b["test_error_max"]:
        return 1
    return 0


def _spearman(x, y) -> float:
    rx, ry = (np.argsort(np.argsort(v)).astype(float) for v in (x, y))
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def _trend(rho: float, threshold: float = 0.8) -> str:
    return "rises" if rho >= threshold else "falls" if rho <= -threshold else "shows no consistent trend"


def weight_trend(st: dict, series: dict[float, str], what: str) -> Verdict | None:
    """How the test and train error move with a pool's weight (``series``: mix -> configuration name).

    Rule: Spearman rank correlation ρ of mix with the mean error over the configurations present (at
    least three): ρ ≥ 0.8 rises, ρ ≤ −0.8 falls, else no consistent trend.
    """
    present = sorted((m, n) for m, n in series.items() if n in st)
    if len(present) < 3:
        return None
    mixes = [m for m, _ in present]
    test = [st[n]["test_error_mean"] for _, n in present]
    tr = [st[n]["train_error_mean"] for _, n in present]
    rho_test, rho_train = _spearman(mixes, test), _spearman(mixes, tr)
    return Verdict(f"The test error {_trend(rho_test)} with the weight of {what}", None,
                   "Rule: rank correlation of mix and error, |ρ| ≥ 0.8 for a trend. Mix "
                   + " / ".join(f"{m:g}" for m in mixes) + " → test error " + " / ".join(pct(v) for v in test)
                   + f" (ρ = {rho_test:+.2f}); train error " + " / ".join(pct(v) for v in tr)
                   + f" ({_trend(rho_train)}, ρ = {rho_train:+.2f}).",
                   {"mix": mixes, "test_error": test, "train_error": tr, "rho_test": rho_test, "rho_train": rho_train})


def paired_change(st: dict, change: str, with_it: str, without: str) -> Verdict | None:
    """What one change to a configuration does to its test error (``with_it`` against ``without``).

    Rule: ``seed_order`` — lower or higher only when the seeds' ranges do not overlap.
    """
    if with_it not in st or without not in st:
        return None
    a, b = st[with_it], st[without]
    effect = {-1: "lower test error", 1: "higher test error",
              0: "no difference in test error beyond the seeds' spread"}[seed_order(a, b)]
    return Verdict(f"{change}: {effect}", None,
                   f"{pct(a['test_error_mean'])} ({pct(a['test_error_min'])}–{pct(a['test_error_max'])}) with it, "
                   f"{pct(b['test_error_mean'])} ({pct(b['test_error_min'])}–{pct(b['test_error_max'])}) without "
                   f"({with_it} vs {without}).",
                   {"with": a["test_error_mean"], "without": b["test_error_mean"], "order": seed_order(a, b)})


def distance_relation(st: dict, names: list[str], what: str) -> Verdict | None:
    """Whether configurations whose pool examples lie farther out have higher test error.

    Rule: Spearman ρ over the configurations present with a pool distortion (at least four) of their
    last-epoch pool distortion and their mean test error; |ρ| ≥ 0.8 for a relation.
    """
    rows = [(st[n]["pool_distortion"], st[n]["test_error_mean"], n) for n in names
            if n in st and st[n].get("pool_distortion") is not None]
    if len(rows) < 4:
        return None
    rho = _spearman([r[0] for r in rows], [r[1] for r in rows])
    reading = ("go with a higher test error" if rho >= 0.8 else "go with a lower test error" if rho <= -0.8
               else "show no consistent relation to the test error")
    return Verdict(f"Farther pool examples ({what}) {reading}", None,
                   f"Rule: rank correlation of the last epoch's pool distortion and the test error over {len(rows)} "
                   f"configurations, |ρ| ≥ 0.8 for a relation: ρ = {rho:+.2f} ("
                   + "; ".join(f"{n}: {d:.3f}, {pct(e)}" for d, e, n in sorted(rows)) + ").",
                   {"rho": rho, "configurations": len(rows)})


def near_baseline(st: dict, baseline: str = "weight decay only") -> Verdict | None:
    """Which pool configurations are not worse than the baseline (by ``seed_order``)."""
    if baseline not in st or len(st) < 2:
        return None
    b = st[baseline]
    below = [n for n in st if n != baseline and seed_order(st[n], b) < 0]
    level = [n for n in st if n != baseline and seed_order(st[n], b) == 0]
    if below:
        claim = f"{len(below)} pool configuration(s) beat {baseline} on every seed"
    elif level:
        claim = f"{len(level)} pool configuration(s) overlap {baseline}'s seed range, none beats it"
    else:
        claim = f"Every pool configuration is worse than {baseline} on every seed"
    names = below or level
    return Verdict(claim, None,
                   f"{baseline}: {pct(b['test_error_mean'])} ({pct(b['test_error_min'])}–{pct(b['test_error_max'])})"
                   + ("" if not names else "; " + ", ".join(f"{n} {pct(st[n]['test_error_mean'])}" for n in names)) + ".",
                   {"below": below, "overlapping": level})


# ---- positive controls of adversarial training ------------------------------------------------------


def controls_table(controls: dict) -> str:
    """Markdown table of controls (name -> ``test_errors``, ``train_errors``, ``distortions``, ``seeds``)."""
    def mean(v):
        v = [x for x in v if x is not None]
        return sum(v) / len(v) if v else None
    rows = [[n, ", ".join(map(str, c["seeds"])), f"{pct(mean(c['test_errors']))} ({pct(min(c['test_errors']))}–"
             f"{pct(max(c['test_errors']))})", pct(mean(c["train_errors"])),
             "–" if mean(c["distortions"]) is None else f"{mean(c['distortions']):.4f}"] for n, c in controls.items()]
    head = ["Method", "Seeds", "Test error, mean (range)", "Train error", "Av. min. distortion"]
    return table(head, rows)


def controls_beat_baseline(controls: dict, baseline: str = "weight decay only") -> Verdict | None:
    """Does any known-good method lower the clean test error of this net below weight decay alone?

    Rule: a method beats the baseline when its worst seed is below the baseline's best (``seed_order``).
    """
    if baseline not in controls or len(controls) < 2:
        return None
    b = controls[baseline]
    better = [n for n in controls if n != baseline and seed_order(controls[n], b) < 0]
    worse = [n for n in controls if n != baseline and seed_order(controls[n], b) > 0]
    return Verdict("A known-good method lowers the clean test error below weight decay alone", bool(better),
                   (f"Better on every seed: {', '.join(better)}. " if better else "")
                   + f"Rule: a method's worst seed below weight decay alone's best. Weight decay alone "
                   f"{pct(b['test_error_mean'])} ({pct(b['test_error_min'])}–{pct(b['test_error_max'])}); "
                   + "; ".join(f"{n} {pct(c['test_error_mean'])} ({pct(c['test_error_min'])}–{pct(c['test_error_max'])})"
                               for n, c in controls.items() if n != baseline)
                   + (f". Worse on every seed: {', '.join(worse)}." if worse else "."),
                   {"better": better, "worse": worse})


def settled(controls: dict, pools: dict, baseline: str = "weight decay only") -> Verdict | None:
    """What the controls say about the pools' result: both read by ``seed_order`` against weight decay alone
    (``controls``' baseline for the controls, the pools' own baseline runs for the pools)."""
    if baseline not in controls or baseline not in pools:
        return None
    control_helps = any(seed_order(c, controls[baseline]) < 0 for n, c in controls.items() if n != baseline)
    pools_help = any(seed_order(p, pools[baseline]) < 0 for n, p in pools.items() if n != baseline)
    if control_helps and not pools_help:
        text = ("A known-good method lowers this net's clean error and the paper's pools do not: the training "
                "machinery can improve on weight decay alone here, the pools as we implement them do not.")
    elif control_helps and pools_help:
        text = "Both a known-good method and the pools lower this net's clean error below weight decay alone."
    elif pools_help:
        text = "The pools lower the clean error below weight decay alone, and no positive control does."
    else:
        text = ("Nothing beats weight decay alone on every seed, not even the known-good methods: at this "
                "baseline (a well-tuned FC100-100-10) any gain from adversarial training is below what these seeds "
                "resolve, so the pools' failure says little about the pools themselves.")
    return Verdict("What the positive controls say about the pools", None, text,
                   {"control_helps": control_helps, "pools_help": pools_help})


def bound_propagation_section(sandwich: dict, images: int) -> str:
    """The spectral report's sandwich by CROWN (``intriguing_jax.bounds``) beside the product bound's, with
    its verdict; empty if it was not computed."""
    rows = {n: s["bound_propagation"]["crown"] for n, s in sandwich.items() if "bound_propagation" in s}
    if not rows:
        return ""
    head = ["Model", "Compared", "Mean found ‖r‖₂", "Targeted radius", "Untargeted radius",
            "Found / targeted, median [10%, 90%]", "(product bound's median)", "Violations"]
    body = [[n, str(b["compared"]), f"{b['mean_found_l2']:.3f}", f"{b['mean_certified_l2']:.4f}",
             f"{b['mean_untargeted_certified_l2']:.4f}", f"{b['ratio_median']:.3g} [{b['ratio_p10']:.3g}, "
             f"{b['ratio_p90']:.3g}]", f"{sandwich[n]['ratio_median']:.3g}", str(b["violations"])] for n, b in rows.items()]
    return ("\n### Certified by bound propagation (CROWN) vs distortion found\n\n"
            f"The first {images} of those images: the largest L2 radius CROWN proves (bisection to 0.1%) around the "
            "prediction, for the attack's target class (targeted) and for every other class (untargeted), over "
            "perturbations that keep the image in the pixel box [0, 1] (as the attack's do; the product bound "
            "ignores the box).\n\n"
            + table(head, body)
            + "\n" + bullets([bound_propagation_tight(rows)]) + "\n")


# ---- training recipes on another dataset ---------------------------------------------------------


def recipe_choice(model: str, candidates: dict) -> Verdict:
    """Which recipe a model trains with on a dataset: the registry's, unless a challenger is better on the
    held-out validation set beyond the seeds' spread.

    Rule: a challenger replaces the registry's recipe only if every seed's validation error lies below every
    seed's of the registry's recipe (``seed_order`` on validation errors); of several such, the lowest mean.

    Args:
      candidates: label -> {"changes": dict (empty for the registry's recipe), "val_errors": [per seed]};
        exactly one entry has empty changes.
    """
    def stats(c):
        v = c["val_errors"]
        return {"test_error_mean": float(np.mean(v)), "test_error_min": min(v), "test_error_max": max(v)}
    (incumbent,) = [label for label, c in candidates.items() if not c["changes"]]
    base = stats(candidates[incumbent])
    better = sorted((stats(c)["test_error_mean"], label) for label, c in candidates.items()
                    if c["changes"] and seed_order(stats(c), base) == -1)
    chosen = better[0][1] if better else incumbent
    ranges = "; ".join(f"{label} {pct(stats(c)['test_error_mean'])} ({pct(stats(c)['test_error_min'])}–"
                       f"{pct(stats(c)['test_error_max'])})" for label, c in candidates.items())
    return Verdict(f"{model}: {chosen}", None,
                   f"Validation error, mean (seed range): {ranges}. "
                   + (f"{len(better)} challenger(s) below the registry's recipe on every seed; the lowest mean wins."
                      if better else "No challenger lies below the registry's recipe on every seed: it stays."),
                   {"chosen": chosen, "changes": candidates[chosen]["changes"]})
