"""Closed-form global minimizers of the UFM variants, derived in ``docs/theory/ufm.md``.

- CE with weight decay [Zhu21]: :func:`ce_closed_form`.
- MSE, bias-free, weight decay [Tir22]: :func:`mse_closed_form`.
- MSE with bias and weight decay (λ_W, λ_H > 0, any λ_b ≥ 0): :func:`mse_bias_closed_form`.
- MSE with bias, unregularized, gradient flow from a small init [Mix20]: :func:`mixon_closed_form`.

:func:`closed_form` picks the one that applies to a :class:`~ncollapse.theory.ufm.UFMProblem`;
:func:`why_no_closed_form` says why none does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ncollapse.geometry import canonical_etf, helmert_basis
from ncollapse.theory.ufm.model import UFMProblem

__all__ = [
    "ClosedForm",
    "ce_closed_form",
    "closed_form",
    "mixon_closed_form",
    "mse_bias_closed_form",
    "mse_closed_form",
    "orthogonal_frame_error",
    "why_no_closed_form",
]


@dataclass
class ClosedForm:
    """A closed-form global minimizer (up to rotation) and its objective value.

    ``weight_sq_norm``/``feature_sq_norm`` are the means over rows of ‖w_c‖² and ‖h_{c,i}‖²
    (what :func:`~ncollapse.theory.ufm.compare` measures on a solution); ``weight``/
    ``features``/``bias`` realise one minimizer (None where it is not unique up to rotation).
    ``regime`` is "collapse" (nonzero minimizer) or "zero".
    """

    objective: float
    weight_sq_norm: float
    feature_sq_norm: float
    regime: str
    weight: np.ndarray | None
    features: np.ndarray | None
    bias: np.ndarray | None
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The numbers (not the matrices), for JSON."""
        return {"objective": self.objective, "weight_sq_norm": self.weight_sq_norm,
                "feature_sq_norm": self.feature_sq_norm, "regime": self.regime, **self.extra}


def _need_positive(**kw: float) -> None:
    for name, v in kw.items():
        if not v > 0:
            raise ValueError(f"the closed form needs {name} > 0 (with {name} = 0 the infimum is "
                             f"not attained: the norms run off), got {v}")


def ce_closed_form(classes: int, per_class: int, dim: int, lambda_w: float, lambda_h: float,
                   *, bias: bool = True) -> ClosedForm:
    """Global minimizer of the CE UFM [Zhu21].

    With β = C·sqrt(n λ_W λ_H): t* = ((C−1)/C)·log(1 + C(1−β)/β) when β < 1, else t* = 0 (the
    minimizer is W = H = 0). ‖w_c‖² = t*·sqrt(nλ_H/λ_W), h_{c,i} = sqrt(λ_W/(nλ_H))·w_c, W a
    simplex ETF, b = 0, objective log(1 + (C−1)e^{−Ct*/(C−1)}) + β t*. Needs d ≥ C−1.
    The value does not depend on λ_b (b = 0 is optimal; with λ_b = 0 any b ∝ 1 is).
    """
    c, n = int(classes), int(per_class)
    if dim < c - 1:
        raise ValueError(f"the CE closed form needs dim >= classes-1 = {c - 1}, got dim={dim}")
    _need_positive(lambda_w=lambda_w, lambda_h=lambda_h)
    beta = c * math.sqrt(n * lambda_w * lambda_h)
    t = (c - 1) / c * math.log1p(c * (1.0 - beta) / beta) if beta < 1.0 else 0.0
    value = math.log1p((c - 1) * math.exp(-c * t / (c - 1))) + beta * t
    rho = t * math.sqrt(n * lambda_h / lambda_w)
    kappa = math.sqrt(lambda_w / (n * lambda_h))
    w = canonical_etf(c, dim, scale=math.sqrt(rho)) if rho > 0 else np.zeros((c, dim))
    h = kappa * np.repeat(w, n, axis=0)
    return ClosedForm(objective=value, weight_sq_norm=rho, feature_sq_norm=kappa**2 * rho,
                      regime="collapse" if beta < 1.0 else "zero", weight=w, features=h,
                      bias=np.zeros(c) if bias else None,
                      extra={"beta": beta, "logit_margin": c * t / (c - 1),
                             "threshold_sqrt_n_lw_lh": 1.0 / c,
                             "sqrt_n_lw_lh": math.sqrt(n * lambda_w * lambda_h)})


def mse_closed_form(classes: int, per_class: int, dim: int, lambda_w: float,
                    lambda_h: float) -> ClosedForm:
    """Global minimizer of the bias-free MSE UFM with weight decay [Tir22].

    With s = sqrt(λ_Wλ_H) < 1 and k = min(d, C): W H̄ᵀ = (1 − s)·P with P an orthogonal
    projection of rank k (P = I when d ≥ C), class means with H̄ᵀH̄ = ρ_h·P, WWᵀ = ρ_w·P,
    ρ_h = (1 − s)·sqrt(λ_W/λ_H), ρ_w = (1 − s)·sqrt(λ_H/λ_W); objective (C − k(1 − s)²)/(2C).
    The mean squared row norms are ρ·k/C. For s ≥ 1 the minimizer is 0 with objective 1/2.
    For d < C the minimizer is unique only up to the choice of P: ``weight`` etc. are None.
    """
    c = int(classes)
    _need_positive(lambda_w=lambda_w, lambda_h=lambda_h)
    s = math.sqrt(lambda_w * lambda_h)
    k = min(dim, c)
    shrink = max(1.0 - s, 0.0)
    value = (c - k * shrink**2) / (2.0 * c)
    rho_h = shrink * math.sqrt(lambda_w / lambda_h)
    rho_w = shrink * math.sqrt(lambda_h / lambda_w)
    w = h = None
    if dim >= c or shrink == 0.0:
        eye = np.zeros((c, dim))
        eye[np.arange(min(c, dim)), np.arange(min(c, dim))] = 1.0
        w = math.sqrt(rho_w) * eye
        h = np.repeat(math.sqrt(rho_h) * eye, per_class, axis=0)
    return ClosedForm(objective=value, weight_sq_norm=rho_w * k / c,
                      feature_sq_norm=rho_h * k / c,
                      regime="collapse" if shrink > 0 else "zero", weight=w, features=h,
                      bias=None, extra={"s": s, "rank": float(k if shrink > 0 else 0),
                                        "rho_w": rho_w, "rho_h": rho_h})


def mse_bias_closed_form(classes: int, per_class: int, dim: int, lambda_w: float,
                         lambda_h: float, lambda_b: float = 0.0) -> ClosedForm:
    """Global minimizer of the MSE UFM with a bias and weight decay (λ_W, λ_H > 0, λ_b ≥ 0).

    With s = sqrt(λ_Wλ_H), T = I − 11ᵀ/C and the class-mean output Z = H̄Wᵀ, the problem is
    the convex min_{Z,b} ‖Z + 1bᵀ − I‖² + 2s‖Z‖_* + λ_b‖b‖² (times 1/(2C)) when d ≥ rank Z;
    its class-permutation-symmetric optimum is Z = (1 − s)₊·T + z·11ᵀ/C:

    - s ≥ s_b = λ_b/(C + λ_b) (always when λ_b = 0): z = 0, W a simplex ETF with
      WWᵀ = (1 − s)₊·sqrt(λ_H/λ_W)·T, h_{c,i} = sqrt(λ_W/λ_H)·w_c (global mean 0),
      b = 1/(C + λ_b)·1, objective [(C − 1) − k(1 − s)₊² + λ_b/(C + λ_b)]/(2C), k = min(d, C−1).
    - s < s_b (a strong bias penalty): the features also carry the constant output,
      z = 1 − s − sC/λ_b, b = (s/λ_b)·1, objective [(C − 1)(1 − (1 − s)²) + 2s − s²(1 + C/λ_b)]
      /(2C); needs d ≥ C.

    With λ_b = 0 the objective is (C − 1)(1 − (1 − s)²)/(2C) in the notation of the bias-free
    case. For d < C − 1 (λ_b = 0 only) the value holds with k = d but the minimizer is unique
    only up to a subspace: ``weight`` etc. are None.
    """
    c, n = int(classes), int(per_class)
    _need_positive(lambda_w=lambda_w, lambda_h=lambda_h)
    if not (math.isfinite(lambda_b) and lambda_b >= 0):
        raise ValueError(f"lambda_b must be a finite number >= 0, got {lambda_b}")
    s = math.sqrt(lambda_w * lambda_h)
    shrink = max(1.0 - s, 0.0)
    s_b = lambda_b / (c + lambda_b)
    if s >= s_b:
        z, bias_value, g = 0.0, 1.0 / (c + lambda_b), s_b
    else:
        z, bias_value = 1.0 - s - s * c / lambda_b, s / lambda_b
        g = 2.0 * s - s * s * (1.0 + c / lambda_b)
    if z > 0 and dim < c:
        raise ValueError(f"with lambda_b = {lambda_b:g} > C·s/(1 − s) the minimizer has rank C: "
                         f"the closed form needs dim >= classes = {c}, got dim={dim}")
    if lambda_b > 0 and dim < c - 1:
        raise ValueError(f"with lambda_b > 0 the closed form needs dim >= classes-1 = {c - 1}, "
                         f"got dim={dim}")
    k = min(dim, c - 1)
    value = ((c - 1) - k * shrink**2 + g) / (2.0 * c)
    ratio_w, ratio_h = math.sqrt(lambda_h / lambda_w), math.sqrt(lambda_w / lambda_h)
    rho_w, rho_h = shrink * ratio_w, shrink * ratio_h
    w = h = None
    if dim >= c - 1 or shrink == 0.0:
        w = np.zeros((c, dim))
        if shrink > 0:
            w[:, : c - 1] = math.sqrt(rho_w) * helmert_basis(c)
        if z > 0:
            w[:, c - 1] = math.sqrt(z * ratio_w / c)
        h = np.repeat(math.sqrt(lambda_w / lambda_h) * w, n, axis=0)
    weight_sq = (rho_w * k + z * ratio_w) / c
    return ClosedForm(objective=value, weight_sq_norm=weight_sq,
                      feature_sq_norm=weight_sq * lambda_w / lambda_h,
                      regime="collapse" if shrink > 0 or z > 0 else "zero", weight=w,
                      features=h, bias=np.full(c, bias_value),
                      extra={"s": s, "s_b": s_b, "rank": float((k if shrink > 0 else 0)
                                                               + (z > 0)),
                             "rho_w": rho_w, "rho_h": rho_h, "global_mean_output": z,
                             "bias_value": bias_value})


def mixon_closed_form(classes: int, per_class: int, dim: int) -> ClosedForm:
    """Limit of the gradient flow from a small init on the unregularized MSE UFM with bias [Mix20].

    Zero loss with b = 1/C, h_{c,i} = w_c/sqrt(n), WWᵀ = sqrt(n)·(I − 11ᵀ/C) (the balance
    WᵀW = HᵀH that the flow conserves from a near-zero start fixes the scale); needs d ≥ C−1.
    """
    c, n = int(classes), int(per_class)
    if dim < c - 1:
        raise ValueError(f"zero loss needs dim >= classes-1 = {c - 1}, got dim={dim}")
    rho = math.sqrt(n) * (c - 1) / c
    w = canonical_etf(c, dim, scale=math.sqrt(rho))
    h = np.repeat(w, n, axis=0) / math.sqrt(n)
    return ClosedForm(objective=0.0, weight_sq_norm=rho, feature_sq_norm=rho / n,
                      regime="collapse", weight=w, features=h, bias=np.full(c, 1.0 / c))


def _mse_bias_applies(p: UFMProblem) -> bool:
    if p.lambda_w <= 0 or p.lambda_h <= 0:
        return False
    if p.lambda_b == 0:
        return True
    s = math.sqrt(p.lambda_w * p.lambda_h)
    needs = p.classes if s < p.lambda_b / (p.classes + p.lambda_b) else p.classes - 1
    return p.dim >= needs


def closed_form(problem: UFMProblem) -> ClosedForm | None:
    """The closed form that applies to ``problem``, or None where none is known."""
    p = problem
    if p.loss == "ce":
        if p.dim < p.classes - 1 or p.lambda_w <= 0 or p.lambda_h <= 0:
            return None
        return ce_closed_form(p.classes, p.per_class, p.dim, p.lambda_w, p.lambda_h, bias=p.bias)
    if not p.bias:
        if p.lambda_w <= 0 or p.lambda_h <= 0:
            return None
        return mse_closed_form(p.classes, p.per_class, p.dim, p.lambda_w, p.lambda_h)
    if p.lambda_w == 0 and p.lambda_h == 0 and p.lambda_b == 0 and p.dim >= p.classes - 1:
        return mixon_closed_form(p.classes, p.per_class, p.dim)
    if _mse_bias_applies(p):
        return mse_bias_closed_form(p.classes, p.per_class, p.dim, p.lambda_w, p.lambda_h,
                                    p.lambda_b)
    return None


def why_no_closed_form(problem: UFMProblem) -> str:
    """One line: why :func:`closed_form` returns None for ``problem``."""
    p = problem
    if p.loss == "ce" and p.dim < p.classes - 1:
        return f"none: the simplex ETF needs d >= C-1 = {p.classes - 1}"
    if p.loss == "mse" and p.bias and p.lambda_w == p.lambda_h == p.lambda_b == 0:
        return f"none: zero loss needs d >= C-1 = {p.classes - 1}"
    if p.lambda_w <= 0 or p.lambda_h <= 0:
        return "none: with lambda_W or lambda_H = 0 the infimum is not attained"
    return (f"none derived: with lambda_b > 0 the minimizer needs d >= C-1 (or d >= C = "
            f"{p.classes} when lambda_b > C·s/(1 − s)), got d = {p.dim}")


def orthogonal_frame_error(weight: np.ndarray) -> float:
    """‖G/‖G‖_F − I/sqrt(C)‖_F with G = WWᵀ: 0 exactly when the rows of W are orthogonal with
    equal norms (the bias-free MSE minimizer [Tir22], which is not a simplex ETF)."""
    g = weight @ weight.T
    norm = np.linalg.norm(g)
    if norm == 0:
        return float("nan")
    c = g.shape[0]
    return float(np.linalg.norm(g / norm - np.eye(c) / math.sqrt(c)))
