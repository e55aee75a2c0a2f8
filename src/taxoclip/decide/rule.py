"""The deepest confident rank: one answer per photo (or event) from its stored scores.

Rule, applied to the candidates of a scores table (see `scores`):
1. At each rank, the leading group is the named candidate with the most probability mass
   (a species needs both genus and epithet; a group whose name at its rank is empty, such
   as the genus of a species with no genus, is never an answer). Equal masses go to the
   lineage that sorts first.
2. The answer is the deepest rank, species first, whose leading group reaches its threshold
   (a per-taxon threshold where one is given, else the rank's). No rank passing: no answer.
3. A location prior, when given, reweights the candidates first (see `_posterior`); the
   answer's source says `location prior` when that changed it.

Everything is vectorised over rows, so a million stored rows decide in seconds.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError
from .scores import LEVELS, SEP

__all__ = ["Thresholds", "DEFAULT_THRESHOLDS", "Policy", "decide_table", "decide_labels", "DECISION_COLUMNS"]

# Chosen on bio-mini's validation photos for taxoclip-mini (calibrated) over its 300K-taxon
# vocabulary by `bench/bench_decisions.py`: per rank, the lowest threshold that keeps 95 %
# precision for the answers at that rank or deeper. docs/decisions.md has their precision
# and coverage on the test photos, against SpeciesNet's rule.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "species": 0.8, "genus": 0.75, "family": 0.8, "order": 0.95, "class": 0.75, "phylum": 0.7, "kingdom": 0.6,
}
DECISION_COLUMNS = ["prediction", "prediction_rank", "prediction_score", "prediction_source", "note"]
_SPECIES_PARTS = 7


@dataclass
class Thresholds:
    """Per-rank thresholds, optionally overridden per taxon (by its name at that rank)."""

    per_rank: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    per_taxon: dict[tuple[str, str], float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None, taxa_csv: str | os.PathLike | None = None) -> "Thresholds":
        """`0.8` (every rank) or `species=0.85,genus=0.75` (the ranks named; the others keep their
        defaults); `taxa_csv` has columns `rank`, `taxon`, `threshold`."""
        t = cls()
        if text:
            text = text.strip()
            if "=" not in text:
                t.per_rank = {level: _probability(text, "--threshold") for level in LEVELS}
            else:
                for part in text.split(","):
                    name, _, value = part.partition("=")
                    level = _level(name.strip())
                    t.per_rank[level] = _probability(value, f"--threshold {level}")
        if taxa_csv:
            t.per_taxon = _taxon_thresholds(taxa_csv)
        return t

    def as_dict(self) -> dict:
        return {"per_rank": self.per_rank,
                "per_taxon": [{"rank": r, "taxon": n, "threshold": v} for (r, n), v in self.per_taxon.items()]}


def _level(name: str) -> str:
    name = name.lower()
    if name not in LEVELS:
        raise InputError(f"unknown rank {name!r} (ranks: {', '.join(reversed(LEVELS))})")
    return name


def _probability(text, what: str) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise InputError(f"{what}: expected a probability between 0 and 1, got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise InputError(f"{what}: expected a probability between 0 and 1, got {v}")
    return v


def _taxon_thresholds(path) -> dict[tuple[str, str], float]:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read taxon thresholds {path}: {e}") from None
    cols = {c.strip().lower(): c for c in df.columns}
    missing = [c for c in ("rank", "taxon", "threshold") if c not in cols]
    if missing:
        raise InputError(f"taxon thresholds {path}: needs columns rank, taxon, threshold (missing: "
                         f"{', '.join(missing)}; has: {', '.join(df.columns)})")
    out = {}
    for n, row in enumerate(df.itertuples(index=False), start=2):
        r = dict(zip(df.columns, row))
        level = _level(r[cols["rank"]].strip())
        out[(level, r[cols["taxon"]].strip())] = _probability(r[cols["threshold"]], f"{path} line {n}")
    return out


@dataclass
class Policy:
    """Everything a decision depends on besides the scores."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    prior: object | None = None  # a taxoclip.geo.RangePrior
    prior_mode: str = "mask"  # "mask": absent taxa get weight 0; "soft": they get `prior_weight`
    prior_weight: float = 0.1

    def __post_init__(self):
        if self.prior_mode not in ("mask", "soft"):
            raise InputError(f"unknown prior mode {self.prior_mode!r} (mask or soft)")
        _probability(self.prior_weight, "--prior-weight")

    def as_dict(self) -> dict:
        d = {"thresholds": self.thresholds.as_dict()}
        if self.prior is not None:
            d["prior"] = {"mode": self.prior_mode, "weight": self.prior_weight if self.prior_mode == "soft" else 0.0,
                          "sources": self.prior.describe()}
        return d


# ----- candidates as padded arrays ------------------------------------------------------------
@dataclass
class _Candidates:
    """One rank's candidates for R rows: codes [R, K] into `keys` (-1 = none) and masses [R, K]."""

    codes: np.ndarray
    p: np.ndarray
    keys: np.ndarray  # lineage key of each code
    names: np.ndarray  # the name at this rank ("" = not an answer)


def _candidates(table: pa.Table, level: str) -> _Candidates:
    col = table.column(level).combine_chunks()
    probs = table.column(f"{level}_p").combine_chunks()
    lengths = np.asarray(col.value_lengths().fill_null(0), dtype=np.int64)
    rows = len(lengths)
    width = max(int(lengths.max()) if rows else 0, 1)
    encoded = pc.dictionary_encode(col.flatten())  # each lineage once, in C++
    codes_flat = np.asarray(encoded.indices, dtype=np.int64)
    keys = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    flat_p = np.asarray(probs.flatten(), dtype=np.float64)
    starts = np.cumsum(lengths) - lengths
    r = np.repeat(np.arange(rows), lengths)
    c = np.arange(len(codes_flat)) - np.repeat(starts, lengths)
    codes = np.full((rows, width), -1, dtype=np.int64)
    p = np.zeros((rows, width))
    codes[r, c] = codes_flat
    p[r, c] = flat_p
    return _Candidates(codes, p, keys, _names(keys, level))


def _names(keys: np.ndarray, level: str) -> np.ndarray:
    parts = [k.split(SEP) for k in keys]
    if level == "species":
        return np.array([f"{p[5]} {p[6]}" if len(p) == _SPECIES_PARTS and p[5] and p[6] else "" for p in parts],
                        dtype=object)
    i = LEVELS[::-1].index(level)
    return np.array([p[i] if len(p) > i else "" for p in parts], dtype=object)


def _leading(c: _Candidates, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the column of the leading named candidate (-1 when none) and its mass."""
    named = (c.codes >= 0) & (c.names[c.codes.clip(0)] != "") if len(c.keys) else np.zeros(c.codes.shape, bool)
    m = np.where(named, p, -np.inf)
    top = m.max(1) if m.shape[1] else np.full(len(m), -np.inf)
    if not len(c.keys):
        return np.full(len(m), -1), top
    key_order = np.empty(len(c.keys), dtype=np.int64)
    key_order[np.argsort(c.keys)] = np.arange(len(c.keys))
    tie = named & (m == top[:, None])
    j = np.where(tie, key_order[c.codes.clip(0)], np.iinfo(np.int64).max).argmin(1)
    return np.where(np.isfinite(top), j, -1), top


# ----- the location prior ---------------------------------------------------------------------
def _posterior(levels: Mapping[str, _Candidates], weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Masses after reweighting by the prior.

    Each stored species keeps weight w(s); the rest of a stored group's mass (its species
    beyond the stored ones) takes the group's own weight; mass outside every stored candidate
    keeps weight 1 (no range data can be known for it). Normalised over species and that rest,
    so removing absent species makes the others surer, but never surer than the evidence."""
    s = levels["species"]
    ps = np.where(s.codes >= 0, s.p, 0.0)
    psw = ps * weights["species"]
    z = psw.sum(1) + np.clip(1.0 - ps.sum(1), 0.0, None)
    z = np.where(z > 0, z, 1.0)
    out = {"species": psw / z[:, None]}
    for level in LEVELS[1:]:
        g = levels[level]
        index = pd.Index(g.keys)
        depth = LEVELS[::-1].index(level) + 1
        prefixes = [SEP.join(k.split(SEP)[:depth]) for k in s.keys]
        anc_u = index.get_indexer(prefixes) if len(prefixes) else np.zeros(0, dtype=np.int64)
        anc = np.where(s.codes >= 0, anc_u[s.codes.clip(0)] if len(anc_u) else -1, -2)
        same = (anc[:, :, None] == g.codes[:, None, :]) & (g.codes >= 0)[:, None, :]
        inside = np.einsum("rn,rnm->rm", ps, same)
        inside_w = np.einsum("rn,rnm->rm", psw, same)
        pg = np.where(g.codes >= 0, g.p, 0.0)
        out[level] = (inside_w + np.clip(pg - inside, 0.0, None) * weights[level]) / z[:, None]
    return out


def _prior_weights(table: pa.Table, levels: Mapping[str, _Candidates], policy: Policy,
                   notes: list[list[str]]) -> dict[str, np.ndarray] | None:
    from .context import places

    place_ids, place_list = places(table, notes)
    if not place_list:
        return None
    absent = 0.0 if policy.prior_mode == "mask" else policy.prior_weight
    out = {}
    for level, c in levels.items():
        w = np.ones(c.codes.shape)
        valid = (c.codes >= 0) & (place_ids[:, None] >= 0)
        if valid.any():
            pairs = place_ids[:, None].repeat(c.codes.shape[1], 1)[valid] * (len(c.keys) + 1) + c.codes[valid]
            uniq, inverse = np.unique(pairs, return_inverse=True)
            status = np.empty(len(uniq), dtype=np.int8)
            pid, code = uniq // (len(c.keys) + 1), uniq % (len(c.keys) + 1)
            for place in np.unique(pid):
                sel = pid == place
                lineages = [c.keys[k].split(SEP) for k in code[sel]]
                status[sel] = policy.prior.status(lineages, place_list[place])
            w[valid] = np.where(status[inverse] == 0, absent, 1.0)
        out[level] = w
    return out


# ----- decide -----------------------------------------------------------------------------------
def _choose(levels: Mapping[str, _Candidates], masses: Mapping[str, np.ndarray], thresholds: Thresholds, rows: int):
    level_of = np.full(rows, -1)
    name = np.full(rows, "", dtype=object)
    score = np.full(rows, np.nan)
    for li, level in enumerate(LEVELS):
        c = levels[level]
        j, top = _leading(c, masses[level])
        has = j >= 0
        code = np.where(has, c.codes[np.arange(rows), j.clip(0)], 0)
        thr = np.full(len(c.keys), thresholds.per_rank[level])
        if thresholds.per_taxon and len(c.keys):
            own = pd.Series(c.names).map({n: v for (lv, n), v in thresholds.per_taxon.items() if lv == level})
            thr = own.fillna(thresholds.per_rank[level]).to_numpy(dtype=np.float64)
        passed = has & (level_of < 0) & (top >= (thr[code] if len(thr) else np.inf))
        level_of[passed] = li
        name[passed] = c.names[code[passed]]
        score[passed] = top[passed]
    return level_of, name, score


def decide_table(table: pa.Table, policy: Policy | None = None) -> pd.DataFrame:
    """Decision columns (`DECISION_COLUMNS`) for every row of a scores table, plus `file_name`."""
    policy = policy or Policy()
    rows = table.num_rows
    levels = {level: _candidates(table, level) for level in LEVELS}
    masses = {level: levels[level].p for level in LEVELS}
    notes: list[list[str]] = [[] for _ in range(rows)]
    level_of, name, score = _choose(levels, masses, policy.thresholds, rows)
    source = np.where(level_of == 0, "model", "rollup").astype(object)
    if policy.prior is not None:
        weights = _prior_weights(table, levels, policy, notes)
        if weights is not None:
            p_level, p_name, p_score = _choose(levels, _posterior(levels, weights), policy.thresholds, rows)
            changed = (p_level != level_of) | (p_name != name)
            source = np.where(changed, "location prior", np.where(p_level == 0, "model", "rollup")).astype(object)
            level_of, name, score = p_level, p_name, p_score
    errors = table.column("error").to_pylist()
    none = level_of < 0
    source[none] = "none"
    out = pd.DataFrame({
        "file_name": table.column("file_name").to_pylist(),
        "prediction": name,
        "prediction_rank": np.where(none, "", np.array(LEVELS, dtype=object)[level_of.clip(0)]),
        "prediction_score": score,
        "prediction_source": source,
        "note": ["; ".join(n) for n in notes],
    })
    failed = np.array([e is not None for e in errors], dtype=bool)
    if failed.any():
        out.loc[failed, ["prediction", "prediction_rank", "prediction_source"]] = ""
        out.loc[failed, "prediction_score"] = np.nan
    out["error"] = errors
    return out


def decide_labels(table: pa.Table, policy: Policy | None = None) -> pd.DataFrame:
    """Decision columns for a table of custom labels (`scores.label_batch`): labels have no ranks,
    so the best label answers when it reaches the species threshold (or a per-taxon threshold
    given for it at rank species), else there is no answer. A location prior needs taxa: refused."""
    policy = policy or Policy()
    if policy.prior is not None:
        raise InputError("a location prior needs a Tree-of-Life vocabulary; custom labels have no taxa")
    t = policy.thresholds
    best = [(ks[0], float(ps[0])) if ks else ("", np.nan) for ks, ps in
            zip(table.column("species").to_pylist(), table.column("species_p").to_pylist())]
    sure = [bool(k) and p >= t.per_taxon.get(("species", k), t.per_rank["species"]) for k, p in best]
    errors = table.column("error").to_pylist()
    sure = [s and e is None for s, e in zip(sure, errors)]
    out = pd.DataFrame({
        "file_name": table.column("file_name").to_pylist(),
        "prediction": [k if s else "" for (k, _), s in zip(best, sure)],
        "prediction_rank": "",
        "prediction_score": [p if s else np.nan for (_, p), s in zip(best, sure)],
        "prediction_source": ["model" if s else ("" if e is not None else "none") for s, e in zip(sure, errors)],
        "note": "",
    })
    out["error"] = errors
    return out
