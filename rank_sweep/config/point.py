"""A trial's identity, typed and defined once: :class:`Point`, and the one codec between it and its stored form.

A point says what one trial trains (``method``; LoRA's ``targets`` and rank ``r``, or a reference method's size),
with which ``seed`` and learning rate (``lr``: None is ``trainer.lr``), and what ``kind`` of row it is::

    Point("Wq,Wv", 4, seed=0)                      # LoRA on Wq and Wv at rank 4
    Point("Wq", 1, 0, lr=3e-3)                     # ... at its own learning rate (an lr probe)
    Point.full(0), Point.head(0)                   # full fine-tuning, the head alone
    Point.reference("ia3", 0, seed=0, lr=1e-2)     # a reference method (its size in r)
    Point("Wq", 64, 0, kind="screen")              # a nested-rank screen (search=nested)

Storage keeps the forms users read (the contract of earlier versions): an Optuna trial's params ``targets``
(the *row*: roles, ``full``, ``head only`` or a method's name), ``r``, ``seed``, plus ``lr`` for an own learning
rate and ``screen`` for a screen; MLflow's params ``targets``/``r``/``seed`` and tag ``tuned``. :func:`decode` reads
that form, :func:`encode` writes it; nothing else interprets a row string. :attr:`Point.label` is the one formatter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from rank_sweep.config.base import FULL, HEAD, METHODS

LORA = "lora"
KINDS = ("trial", "screen", "screened")  # an ordinary trial; a nested screen; a rank scored by truncating one
UNKNOWN = -1  # r or seed of a trial that never got its parameters
_MARKS = {"screen": "(nested screen)", "screened": "(screened)"}
_ROWS = {"full": FULL, "head": HEAD}  # method -> the row string storage keeps for it


@dataclass(frozen=True)
class Point:
    """What one trial runs (see the module doc). ``extra``: other values a sampler drew for it (TPE's alpha_k)."""

    targets: str  # LoRA's roles joined by commas ("Wq,Wv"); "" for every other method
    r: int  # LoRA's rank; a reference method's size (its own unit: method_size); 0 for full and head
    seed: int = 0
    lr: float | None = None  # None: the configured trainer.lr; else the trial's own (a probe's, a reference row's, TPE's)
    kind: str = "trial"  # one of KINDS
    method: str = LORA  # lora | full | head | a reference method (config.METHODS)
    extra: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:  # a learning rate is part of the identity: 1e-3 * 9 and 9e-3 are one lr
        if self.lr is not None:
            object.__setattr__(self, "lr", float(f"{float(self.lr):.12g}"))

    @classmethod
    def full(cls, seed: int, lr: float | None = None) -> Point:
        return cls("", 0, seed, lr, method="full")

    @classmethod
    def head(cls, seed: int, lr: float | None = None) -> Point:
        return cls("", 0, seed, lr, method="head")

    @classmethod
    def reference(cls, method: str, size: int, seed: int, lr: float | None = None) -> Point:
        return cls("", size, seed, lr, method=method)

    @property
    def row(self) -> str:
        """The name storage and tables give what it trains: its roles, ``full``, ``head only`` or a method."""
        return self.targets if self.method == LORA else _ROWS.get(self.method, self.method)

    @property
    def screened(self) -> bool:
        """A nested screen or a rank truncated from one: shown beside the trials, never chosen."""
        return self.kind != "trial"

    @property
    def config(self) -> Point:
        """The configuration without its seed: what makes trials seeds of one row."""
        return replace(self, seed=UNKNOWN)

    @property
    def values(self) -> tuple[tuple[str, float], ...]:
        """Every value stored beside the row, rank and seed (as Optuna params): lr, the kind's mark, ``extra``."""
        out = dict(self.extra)
        if self.lr is not None:
            out["lr"] = float(self.lr)
        if self.kind != "trial":
            out[self.kind] = 1.0
        return tuple(sorted(out.items()))

    @property
    def label(self) -> str:
        """How plots and reports name it: ``Wq,Wv r=4``, ``full``, ``head only``, ``Wq r=1 lr=0.003``."""
        base = self.row if self.method == "full" or self.r == 0 else f"{self.row} r={self.r}"
        return " ".join([base, *(_MARKS[k] if k in _MARKS else f"{k}={v:.3g}" for k, v in self.values)])

    def __str__(self) -> str:
        return (f"{self.row} r={self.r} seed={self.seed}" + ("" if self.lr is None else f" lr={self.lr:g}")
                + (f" {_MARKS[self.kind]}" if self.kind in _MARKS else ""))


def method_of_row(row: str) -> str:
    """The method a stored row names: ``full``, ``head``, a reference method, else ``lora`` (roles)."""
    return {FULL: "full", HEAD: "head"}.get(row) or (row if row in METHODS and row != LORA else LORA)


def decode(row: str, r: int, seed: int, values: Iterable[tuple[str, float]] = ()) -> Point:
    """The point of a stored trial: its row, rank, seed and the other values stored with it (the one decoder)."""
    rest = dict(values)
    lr = rest.pop("lr", None)
    kind = next((k for k in ("screen", "screened") if rest.pop(k, None) == 1.0), "trial")
    method = method_of_row(row)
    return Point(row if method == LORA else "", r, seed, None if lr is None else float(lr), kind, method,
                 tuple(sorted(rest.items())))


def encode(point: Point) -> dict:
    """The stored form of ``point``: ``targets`` (the row), ``r``, ``seed`` and ``values`` (the inverse of decode)."""
    return {"targets": point.row, "r": point.r, "seed": point.seed, "values": point.values}


def to_claim(point: Point, speculative: bool) -> dict:
    """The claim a worker writes on its trial (JSON): the stored form, flat."""
    return {"targets": point.row, "r": point.r, "seed": point.seed, **dict(point.values), "speculative": speculative}


def from_claim(claim: dict) -> Point:
    """The point of a claim (also one an earlier version wrote: ``screen: true``, ``lr``)."""
    values = {k: float(v) for k, v in claim.items() if k not in ("targets", "r", "seed", "speculative")
              and v is not None and v is not False}
    return decode(claim["targets"], claim["r"], claim["seed"], values.items())
