"""Spectra of learned LoRA updates and subspace similarity across ranks.

Follows section 7 of the LoRA paper (Hu et al. 2021, arXiv 2106.09685). The
learned update of one adapted matrix is ``dW = scale * B @ A`` with
``B: d_out x r`` and ``A: r x d_in``; its singular values are computed from
the factors (QR of ``B`` and ``A^T``, SVD of the small ``r x r`` core), so the
``d_out x d_in`` product is never formed.

Usage::

    from rank_sweep.analysis import spectra

    rows = spectra.adapter_spectra(peft_model)            # one row per module
    metrics = spectra.summarize_spectra(rows)             # mlflow.log_metrics(metrics)
    spectra.write_spectra_csv(rows, "out/spectra.csv")

    # Section 7: do the directions learned at r=8 reappear at r=64?
    grids = spectra.ladder_similarity(spectra.lora_A_factors(model_r8),
                                      spectra.lora_A_factors(model_r64))
    spectra.plot_similarity_heatmap(grids, 8, 64, "out/phi_8_64.png")
    k, phi = spectra.reading(next(iter(grids.values())))

Module names are those of ``peft_model.named_modules()`` with a leading
``base_model.model.`` removed. For DoRA adapters the spectrum is that of
``scale * B @ A`` only (the magnitude vector is ignored).
"""

from __future__ import annotations

import csv
import math
import numbers
import re
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

_PREFIX = "base_model.model."
_CSV_FIELDS = ["module", "role", "layer", "r", "d_in", "d_out", "scale",
               "effective_rank_90", "effective_rank_entropy", "top_share", "singular_values"]


def update_singular_values(A: Tensor, B: Tensor, scale: float) -> Tensor:
    """Singular values of ``scale * B @ A`` (float64, descending), from the factors.

    With ``B = Q_B R_B`` and ``A^T = Q_A R_A`` (reduced QR), ``B @ A = Q_B (R_B R_A^T) Q_A^T``,
    so the singular values are those of the small core ``R_B @ R_A^T`` times ``|scale|``.
    Returns ``min(r, d_in, d_out)`` values; all further singular values of the product are zero.
    """
    if A.ndim != 2 or B.ndim != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"need A: r x d_in and B: d_out x r, got A {tuple(A.shape)} and B {tuple(B.shape)}")
    a = A.detach().to("cpu", torch.float64)
    b = B.detach().to("cpu", torch.float64)
    r_b = torch.linalg.qr(b, mode="reduced").R
    r_a = torch.linalg.qr(a.T, mode="reduced").R
    s = torch.linalg.svdvals(r_b @ r_a.T) * abs(float(scale))
    return torch.sort(s, descending=True).values


def _as_values(s) -> np.ndarray:
    v = s.detach().cpu().double().numpy() if isinstance(s, Tensor) else np.asarray(s, dtype=np.float64)
    v = v.ravel()
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError(f"singular values must be finite and >= 0, got {v.tolist()}")
    return np.sort(v)[::-1]


def effective_rank_energy(s, energy: float = 0.9) -> int:
    """Smallest ``k`` with ``sum(s[:k]**2) >= energy * sum(s**2)`` (``s`` sorted descending).

    ``sum(s**2)`` is the squared Frobenius norm of the update, so ``k`` is the number of
    directions that carry ``energy`` of it. Returns 0 when all values are zero.
    """
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    v = _as_values(s)
    sq = v**2
    total = sq.sum()
    if total == 0.0:
        return 0
    share = np.cumsum(sq) / total
    k = int(np.searchsorted(share, energy - 1e-12, side="left")) + 1
    return min(k, len(v))


def effective_rank_entropy(s) -> float:
    """Entropy effective rank (Roy & Vetterli 2007): ``exp(-sum p_i log p_i)``, ``p_i = s_i / sum(s)``.

    Equals ``n`` for ``n`` equal non-zero values and 1 for a single one (``0 log 0 = 0``).
    Returns 0.0 when all values are zero.
    """
    v = _as_values(s)
    total = v.sum()
    if total == 0.0:
        return 0.0
    p = v[v > 0] / total
    return float(math.exp(-float(np.sum(p * np.log(p)))))


def top_energy_share(s) -> float:
    """Share of the top direction: ``s_1**2 / sum(s**2)``; 0.0 when all values are zero."""
    v = _as_values(s)
    total = float(np.sum(v**2))
    return 0.0 if total == 0.0 else float(v[0] ** 2 / total)


def _layer_index(name: str) -> int:
    """First dot-separated component of ``name`` that is an integer, else -1."""
    m = re.search(r"(?:^|\.)(\d+)(?=\.|$)", name)
    return int(m.group(1)) if m else -1


def _lora_factors(peft_model: torch.nn.Module, adapter: str) -> Iterator[tuple[str, Tensor, Tensor, float]]:
    """Yield ``(name, A (r x d_in), B (d_out x r), scale)`` for every LoRA layer holding ``adapter``."""
    from peft.tuners.lora import LoraLayer

    found = False
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        name = name.removeprefix(_PREFIX)
        if adapter in module.lora_A:
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)  # conv: kernel folded into d_in
        elif adapter in module.lora_embedding_A:
            a, b = module.lora_embedding_A[adapter], module.lora_embedding_B[adapter]
        else:
            continue
        if b.shape[1] != a.shape[0]:
            warnings.warn(f"skipping {name}: factor shapes {tuple(a.shape)}, {tuple(b.shape)} do not chain",
                          stacklevel=3)
            continue
        found = True
        yield name, a.detach(), b.detach(), float(module.scaling[adapter])
    if not found:
        raise ValueError(f"no LoRA layers with adapter {adapter!r} in the model")


def adapter_spectra(peft_model: torch.nn.Module, role_of: Callable[[str], str] | None = None,
                    adapter: str = "default") -> list[dict]:
    """One row per adapted module: module, role, layer, r, d_in, d_out, scale, singular_values
    (list of floats, descending), effective_rank_90, effective_rank_entropy, top_share.

    ``role_of`` maps a module name to its role (default: the last name component, e.g. ``query``);
    ``layer`` is the first integer component of the name, or -1.
    """
    role_of = role_of or (lambda n: n.rsplit(".", 1)[-1])
    rows = []
    for name, a, b, scale in _lora_factors(peft_model, adapter):
        s = update_singular_values(a, b, scale)
        rows.append({
            "module": name, "role": role_of(name), "layer": _layer_index(name),
            "r": int(a.shape[0]), "d_in": int(a.shape[1]), "d_out": int(b.shape[0]), "scale": scale,
            "singular_values": s.tolist(), "effective_rank_90": effective_rank_energy(s, 0.9),
            "effective_rank_entropy": effective_rank_entropy(s), "top_share": top_energy_share(s),
        })
    return rows


def summarize_spectra(rows: list[dict]) -> dict[str, float]:
    """Per-role MLflow metrics: ``spectra/<role>/eff_rank90_mean``, ``.../eff_rank90_max``,
    ``.../eff_rank_entropy_mean``, ``.../top_share_mean``. Characters MLflow rejects become ``_``."""
    by_role: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_role[re.sub(r"[^\w\-. /]", "_", str(row["role"]))].append(row)
    out: dict[str, float] = {}
    for role, rs in sorted(by_role.items()):
        k90 = [r["effective_rank_90"] for r in rs]
        out[f"spectra/{role}/eff_rank90_mean"] = float(np.mean(k90))
        out[f"spectra/{role}/eff_rank90_max"] = float(np.max(k90))
        out[f"spectra/{role}/eff_rank_entropy_mean"] = float(np.mean([r["effective_rank_entropy"] for r in rs]))
        out[f"spectra/{role}/top_share_mean"] = float(np.mean([r["top_share"] for r in rs]))
    return out


def write_spectra_csv(rows: list[dict], path: str | Path) -> Path:
    """Write one CSV line per module (singular values ``;``-joined, full precision); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({**row, "singular_values": ";".join(repr(float(x)) for x in row["singular_values"])})
    return path


def _right_vectors(A: Tensor, label: str) -> Tensor:
    """Right-singular vectors of ``A`` as columns (d_in x min(r, d_in)), float64, by descending value."""
    if A.ndim != 2:
        raise ValueError(f"{label} must be 2-D (r x d_in), got shape {tuple(A.shape)}")
    return torch.linalg.svd(A.detach().to("cpu", torch.float64), full_matrices=False).Vh.T


def _phi_grid(A1: Tensor, A2: Tensor) -> np.ndarray:
    v1, v2 = _right_vectors(A1, "A1"), _right_vectors(A2, "A2")
    if v1.shape[0] != v2.shape[0]:
        raise ValueError(f"A1 and A2 need the same d_in, got {v1.shape[0]} and {v2.shape[0]}")
    cum = np.cumsum(np.cumsum((v1.T @ v2).numpy() ** 2, axis=0), axis=1)  # cum[i-1, j-1] = ||U1_i^T U2_j||_F^2
    ii, jj = np.indices(cum.shape) + 1
    return np.clip(cum / np.minimum(ii, jj), 0.0, 1.0)


def similarity_grid(A1: Tensor, A2: Tensor) -> np.ndarray:
    """``phi(A1, A2, i, j)`` for all ``i`` in 1..r1, ``j`` in 1..r2 as an ``(r1, r2)`` array (entry ``[i-1, j-1]``).

    For ``r > d_in`` the axes stop at ``d_in``. Directions beyond a factor's numerical rank, or
    inside a block of equal singular values, are not unique, and neither are their entries.
    """
    return _phi_grid(A1, A2)


def subspace_similarity(A1: Tensor, A2: Tensor, i: int, j: int) -> float:
    """The paper's ``phi(A1, A2, i, j) = ||U1_i^T U2_j||_F^2 / min(i, j)`` in [0, 1].

    ``U1_i``: top-``i`` right-singular vectors of ``A1`` (``r1 x d_in``, vectors in R^d_in);
    ``U2_j`` likewise for ``A2``. Needs ``1 <= i <= min(r1, d_in)`` and ``1 <= j <= min(r2, d_in)``.
    """
    grid = _phi_grid(A1, A2)
    for label, val, top in (("i", i, grid.shape[0]), ("j", j, grid.shape[1])):
        if isinstance(val, bool) or not isinstance(val, numbers.Integral) or not 1 <= val <= top:
            raise ValueError(f"{label}={val!r} must be an integer in 1..{top} (rank of the factor)")
    return float(grid[int(i) - 1, int(j) - 1])


def reading(grid: np.ndarray, threshold: float = 0.5) -> tuple[int, float]:
    """How many top directions learned at r1 reappear at r2.

    Returns ``(k, phi(k, k))`` with ``k`` the largest ``i`` in ``1..min(r1, r2)`` whose diagonal entry
    ``phi(i, i)`` (overlap of the two top-``i`` subspaces) is ``>= threshold``; ``(0, 0.0)`` if none is.
    The diagonal need not be monotone, so a smaller ``i`` may fall below the threshold.
    """
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 2 or g.size == 0:
        raise ValueError(f"grid must be a non-empty 2-D array, got shape {g.shape}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    hits = np.flatnonzero(np.diagonal(g) >= threshold)
    if hits.size == 0:
        return 0, 0.0
    k = int(hits[-1]) + 1
    return k, float(g[k - 1, k - 1])


def lora_A_factors(peft_model: torch.nn.Module, adapter: str = "default") -> dict[str, Tensor]:
    """Module name -> LoRA ``A`` weight (``r x d_in``, detached, on cpu) for every adapted module."""
    return {name: a.cpu().clone() for name, a, _, _ in _lora_factors(peft_model, adapter)}


def ladder_similarity(a_factors_low: dict[str, Tensor], a_factors_high: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """``similarity_grid`` for each module name present in both dicts (names in only one are skipped)."""
    shared = [n for n in a_factors_low if n in a_factors_high]
    if not shared:
        raise ValueError(f"no module names in common, e.g. {sorted(a_factors_low)[:3]} vs {sorted(a_factors_high)[:3]}")
    return {n: similarity_grid(a_factors_low[n], a_factors_high[n]) for n in shared}

