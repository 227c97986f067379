"""Named target groups: ``attention``, ``qv``, ``mlp``, ``all_linear``, resolved per model family by the role map.

A target set may name a group where it names a role (``search.target_sets=[[Wq,Wv],[mlp]]``,
``lora.targets=[all_linear]``); :func:`expand` turns it into the roles the family has, in the group's order:

    expand(["mlp"], FAMILY_ROLES["bert"], "bert")    # (["Wup", "Wdown"], ["mlp on bert: no Wgate ..."])

A role the family lacks is left out with one note saying so; a family whose attention is one fused ``Wqkv``
matrix adapts that matrix for ``attention`` (all three of q, k, v); a group with no role left is refused by the
caller (the role map's own error names what the family has).
"""

from __future__ import annotations

ATTENTION = ("Wq", "Wk", "Wv", "Wo")
MLP = ("Wup", "Wdown", "Wgate")
GROUPS: dict[str, tuple[str, ...]] = {
    "attention": ATTENTION,
    "qv": ("Wq", "Wv"),
    "mlp": MLP,
    "all_linear": ATTENTION + MLP,
}


def _resolve(group: str, roles: dict[str, str]) -> tuple[list[str], list[str]]:
    """(the roles of ``group`` this family has, the ones it lacks)."""
    wanted = list(GROUPS[group])
    qkv = [r for r in ("Wq", "Wk", "Wv") if r in wanted]
    if len(qkv) == 3 and "Wqkv" in roles and not any(r in roles for r in qkv):
        wanted[wanted.index("Wq")] = "Wqkv"  # q, k and v are one matrix here: the group adapts it whole
        wanted = [r for r in wanted if r not in ("Wk", "Wv")]
    return [r for r in wanted if r in roles], [r for r in wanted if r not in roles]


def expand(targets: list[str], roles: dict[str, str], family: str) -> tuple[list[str], list[str]]:
    """``targets`` with every group name replaced by the roles ``family`` has (a role named twice kept once), and
    one note per group that lost a role. A group left empty stays as its first missing role, so that the role
    map's own error explains it."""
    out: list[str] = []
    notes: list[str] = []
    for target in targets:
        if target not in GROUPS:
            out.append(target)
            continue
        have, lack = _resolve(target, roles)
        if lack and have:
            notes.append(f"{target} on {family}: no {', '.join(lack)} in its role map, so {target} is "
                         f"{','.join(have)}")
        out.extend(have or lack[:1])
    return list(dict.fromkeys(out)), notes


def is_group(target) -> bool:
    return isinstance(target, str) and target in GROUPS
