"""Simplex equiangular tight frames (ETFs): construction, checks, Procrustes alignment.

Convention: an ETF of C classes in R^d is a ``(C, d)`` array whose *rows* are the class
vectors (the layout of class means and of a classifier ``W``). A simplex ETF with norm
``scale`` = α has rows of equal norm α, pairwise cosines exactly −1/(C−1), and rows
summing to zero; it exists for every d ≥ C−1 ([Pap20]; definitions in docs/metrics.md).

Every function computes in float64, accepts numpy arrays or torch tensors (any dtype,
any device) and returns numpy float64 arrays.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ncollapse.validation import as_float64 as _as_float64

__all__ = [
    "ProcrustesResult",
    "canonical_etf",
    "etf_distance",
    "etf_gram",
    "helmert_basis",
    "is_simplex_etf",
    "nearest_etf",
    "procrustes",
    "random_orthonormal",
    "simplex_etf",
]


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 2:
        raise ValueError(f"a simplex ETF needs num_classes >= 2, got {num_classes}")
    return int(num_classes)


def _check_dim(dim: int, num_classes: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if dim < num_classes - 1:
        raise ValueError(
            f"a simplex ETF of {num_classes} classes needs dim >= num_classes - 1 = "
            f"{num_classes - 1}, got dim={dim}; use a larger dimension or fewer classes"
        )
    return int(dim)


def helmert_basis(num_classes: int) -> np.ndarray:
    """Orthonormal basis of the sum-zero subspace of R^C, as the columns of a ``(C, C−1)`` array.

    Column j (0-based) is (1, …, 1, −(j+1), 0, …, 0)/sqrt((j+1)(j+2)) with j+1 leading ones
    (the Helmert contrasts); ``B @ B.T == I − 11ᵀ/C`` and ``B.T @ B == I_{C−1}``.
    """
    c = _check_num_classes(num_classes)
    basis = np.zeros((c, c - 1))
    for j in range(1, c):
        basis[:j, j - 1] = 1.0
        basis[j, j - 1] = -float(j)
        basis[:, j - 1] /= np.sqrt(j * (j + 1.0))
    return basis


def canonical_etf(num_classes: int, dim: int | None = None, *, scale: float = 1.0) -> np.ndarray:
    """The fixed reference ETF in R^dim, rows of norm ``scale``.

    For dim ≥ C: α·sqrt(C/(C−1))·(e_c − 1/C), the centred standard basis vectors padded with
    zeros to length dim. For dim = C−1: α·sqrt(C/(C−1)) times the rows of :func:`helmert_basis`.
    ``dim`` defaults to C.
    """
    c = _check_num_classes(num_classes)
    d = c if dim is None else _check_dim(dim, c)
    factor = float(scale) * np.sqrt(c / (c - 1.0))
    out = np.zeros((c, d))
    if d >= c:
        out[:, :c] = factor * (np.eye(c) - 1.0 / c)
    else:  # d == c - 1
        out[:, :] = factor * helmert_basis(c)
    return out


def random_orthonormal(rows: int, cols: int, seed: int | np.random.Generator | None = None
                       ) -> np.ndarray:
    """A ``(rows, cols)`` matrix with orthonormal columns, Haar-distributed (needs rows ≥ cols)."""
    if cols > rows:
        raise ValueError(f"cannot have {cols} orthonormal columns in R^{rows}")
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return q * signs  # sign fix makes the distribution exactly Haar


def simplex_etf(num_classes: int, dim: int | None = None, *, scale: float = 1.0,
                rotation: Any = None, seed: int | np.random.Generator | None = None
                ) -> np.ndarray:
    """A simplex ETF of ``num_classes`` vectors in R^dim, as the rows of a ``(C, dim)`` array.

    Rows have norm ``scale``, pairwise cosine −1/(C−1) and sum to zero. ``dim`` (≥ C−1)
    defaults to C, or to ``rotation.shape[0]`` when a rotation is given.

    Orientation (at most one of ``rotation`` and ``seed``):
    - neither: :func:`canonical_etf` (centred standard basis; Helmert rows when dim = C−1);
    - ``seed``: a uniformly random (Haar) rotation of the canonical ETF, reproducible per seed;
    - ``rotation``: a ``(dim, k)`` matrix U with orthonormal columns, k ≥ C−1; the result is
      ``canonical_etf(C, k, scale=scale) @ U.T``. With k = C this is the paper's
      M = α·sqrt(C/(C−1))·U(I − 11ᵀ/C), transposed to rows; k = C−1 works for dim = C−1 too.
    """
    c = _check_num_classes(num_classes)
    scale = float(scale)
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    if rotation is not None and seed is not None:
        raise ValueError("give either rotation or seed, not both")
    if rotation is None:
        d = c if dim is None else _check_dim(dim, c)
        if seed is None:
            return canonical_etf(c, d, scale=scale)
        k = c if d >= c else c - 1
        u = random_orthonormal(d, k, seed)
        return canonical_etf(c, k, scale=scale) @ u.T
    u = _as_float64(rotation, "rotation", ndim=2)
    d, k = u.shape
    if dim is not None and _check_dim(dim, c) != d:
        raise ValueError(f"rotation has {d} rows but dim={dim}; they must agree")
    if k < c - 1:
        raise ValueError(
            f"rotation must have at least num_classes - 1 = {c - 1} columns, got shape {u.shape}"
        )
    if d < k:
        raise ValueError(
            f"rotation of shape {u.shape} cannot have orthonormal columns (rows < cols)"
        )
    err = np.abs(u.T @ u - np.eye(k)).max()
    if err > 1e-8:
        raise ValueError(
            f"rotation columns must be orthonormal (max |UᵀU − I| = {err:.2e}); "
            "orthonormalise it, e.g. with numpy.linalg.qr"
        )
    return canonical_etf(c, k, scale=scale) @ u.T


def etf_gram(num_classes: int, *, scale: float = 1.0, normalize: str = "unit") -> np.ndarray:
    """The ``(C, C)`` Gram matrix of a simplex ETF: scale²·C/(C−1)·(I − 11ᵀ/C).

    ``normalize="unit"`` (default): diagonal ``scale``², off-diagonal −scale²/(C−1).
    ``normalize="frobenius"``: (I − 11ᵀ/C)/sqrt(C−1), Frobenius norm 1 (``scale`` ignored),
    the target of the ETF Gram error [Zhu21].
    """
    c = _check_num_classes(num_classes)
    centred = np.eye(c) - 1.0 / c
    if normalize == "unit":
        return float(scale) ** 2 * (c / (c - 1.0)) * centred
    if normalize == "frobenius":
        return centred / np.sqrt(c - 1.0)
    raise ValueError(f"normalize must be 'unit' or 'frobenius', got {normalize!r}")


def is_simplex_etf(vectors: Any, *, atol: float = 1e-8, center: bool = False) -> bool:
    """Whether the rows of ``vectors`` (C, d) form a simplex ETF of any norm and orientation.

    The Gram matrix divided by the mean squared norm must match :func:`etf_gram` entrywise
    within ``atol`` (which checks equal norms, cosines −1/(C−1) and zero sum at once).
    ``center=True`` first subtracts the mean row, so a translated ETF also passes.
    """
    v = _as_float64(vectors, "vectors", ndim=2)
    c = v.shape[0]
    if c < 2 or v.shape[1] < c - 1:
        return False
    if center:
        v = v - v.mean(axis=0)
    gram = v @ v.T
    mean_sq = float(np.trace(gram)) / c
    if mean_sq <= 0:
        return False
    return bool(np.abs(gram / mean_sq - etf_gram(c)).max() <= atol)


class ProcrustesResult(NamedTuple):
    """Best ``scale · A @ rotation`` ≈ B: rotation (p, q) with orthonormal rows, scale ≥ 0."""

    rotation: np.ndarray
    scale: float
    residual: float  # ‖scale · A @ rotation − B‖_F


def procrustes(a: Any, b: Any, *, scale: bool = True) -> ProcrustesResult:
    """Orthogonal Procrustes: the R and s minimising ‖s·A R − B‖_F.

    A is (n, p), B is (n, q) with p ≤ q; R ranges over (p, q) matrices with orthonormal rows
    (R Rᵀ = I_p; an orthogonal matrix when p = q, reflections included). With ``scale=False``
    s is fixed to 1. Solution: Aᵀ B = U S Vᵀ (thin SVD), R = U Vᵀ, s = ΣS / ‖A‖_F².
    """
    a = _as_float64(a, "A", ndim=2)
    b = _as_float64(b, "B", ndim=2)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"A and B need the same number of rows, got {a.shape} and {b.shape}")
    if a.shape[1] > b.shape[1]:
        raise ValueError(
            f"A has more columns than B ({a.shape[1]} > {b.shape[1]}); swap the arguments"
        )
    u, s, vt = np.linalg.svd(a.T @ b, full_matrices=False)
    rotation = u @ vt
    norm_a = float(np.sum(a * a))
    if scale:
        if norm_a == 0:
            raise ValueError("A is all zeros; the optimal scale is undefined")
        factor = float(s.sum()) / norm_a
    else:
        factor = 1.0
    residual = float(np.linalg.norm(factor * (a @ rotation) - b))
    return ProcrustesResult(rotation, factor, residual)


def _prepare(vectors: Any, center: bool) -> np.ndarray:
    v = _as_float64(vectors, "vectors", ndim=2)
    c, d = v.shape
    if c < 2:
        raise ValueError(f"need at least 2 vectors (rows), got shape {v.shape}")
    if d < c - 1:
        raise ValueError(
            f"{c} vectors in R^{d}: a simplex ETF of {c} vectors needs dimension >= {c - 1}"
        )
    if center:
        v = v - v.mean(axis=0)
    if not np.any(v):
        raise ValueError("all vectors are zero" + (" after centring" if center else ""))
    return v


def nearest_etf(vectors: Any, *, center: bool = True) -> np.ndarray:
    """The simplex ETF (any norm, any orientation) closest in Frobenius norm to the rows.

    Orthogonal Procrustes with optimal scale aligns the reference ETF to ``vectors`` (C, d).
    ``center=True`` (default) first subtracts the mean row (as for class means minus the
    global mean); the result is then the nearest ETF to the centred vectors.
    """
    v = _prepare(vectors, center)
    ref = canonical_etf(v.shape[0], v.shape[0] - 1)
    fit = procrustes(ref, v)
    return fit.scale * (ref @ fit.rotation)


def etf_distance(vectors: Any, *, center: bool = True) -> float:
    """Relative distance ‖V − E‖_F / ‖V‖_F of the rows V to their nearest simplex ETF E.

    0 exactly for an ETF, between 0 and 1 always, invariant to rotation, reflection and
    positive scaling of V (and, with ``center=True``, to translating all rows).
    """
    v = _prepare(vectors, center)
    e = nearest_etf(v, center=False)
    return float(np.linalg.norm(v - e) / np.linalg.norm(v))
