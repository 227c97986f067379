"""The adaptation method of a trial: LoRA (the ``lora`` section) or a reference method (``conf/method/``).

    rank-sweep-trial method=ia3                     # one IA3 trial
    rank-sweep search.reference_methods=[ia3,adalora]   # reference rows beside the ladder
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rank_sweep.config.base import default


@dataclass
class MethodConfig:
    """``name``: ``lora`` or a reference method; ``settings``: that method's PEFT config fields."""

    name: str = default("method", "name")
    settings: dict[str, Any] = default("method", "settings")
