"""Vocabulary: banks of class text embeddings, and exact softmax scoring over them.

A `TextBank` is an [N, D] matrix of L2-normalised class embeddings (row-major, usually
memory-mapped) with a table of what each row is: seven ranks and a common name for taxa,
or a `label` for a custom list. Banks come from

* the published Tree-of-Life vocabularies (`txt_emb_species.npy` [D, N] float32 and
  `txt_emb_species.json`), converted once into a cached compact form keyed by the files'
  identity, all-zero columns dropped;
* any taxa table or label list, embedded with a model through prompt templates (cached by
  model, templates and texts).

Scoring is the exact softmax over every row, computed in chunks: memory stays at
O(batch x chunk) however large the vocabulary. A bundled vocabulary stays in its int8 form
(one scale per row) and each chunk is widened to float32 as it is scanned: a quarter of the
memory, and the rows are exactly the ones a float32 copy would hold. Packed for the CPU's int8
product (`pack_int8`, as the server does without AVX-512), an int8 bank scans small batches
2-3x faster on AVX2 CPUs, within ~1e-5 of the float32 result (`Int8Rows`). With a bf16 bank
the matrix product is done in bf16 (fast on CPUs with AVX512-BF16/AMX). After a first pass in
bf16 or int8, the few candidates that matter are rescored in fp32, so the reported
probabilities keep fp32 accuracy.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from .cache import cache_entry, hash_key
from .models.runtime import release_memory
from .errors import TaxoclipError
from .taxonomy import RANKS, Rank, Taxon, apply_templates

if TYPE_CHECKING:
    from .models import ClipModel

__all__ = ["TextBank", "RANK_COLUMNS", "TAXA_COLUMNS", "VocabularyError", "read_subset_csv", "read_bins_csv",
           "write_space", "read_space", "check_space", "take_values"]

log = logging.getLogger(__name__)

RANK_COLUMNS = ["kingdom", "phylum", "class", "order", "family", "genus", "species_epithet"]
TAXA_COLUMNS = RANK_COLUMNS + ["common_name"]
EMB_FILE, NAMES_FILE = "txt_emb_species.npy", "txt_emb_species.json"
# The compact layout a bundled model ships: int8 rows with one float32 scale each, and the taxa table.
COMPACT_EMB, COMPACT_TAXA = "vocabulary.safetensors", "vocabulary.parquet"
# Rows per scoring step: a batch's logits for one chunk (64 x 16384 floats, 4 MB) stay in cache
# while they are reduced (300K int8 rows, 2 Zen 3 cores: 2.81 ms per photo vs 3.03 with 65536 rows,
# `bench/bench_inference_form.py`).
CHUNK_ROWS = 16384
# Batches up to this many photos scan a packed int8 bank with the int8 product (`TextBank.pack_int8`).
INT8_MAX_BATCH = 32
PASSES = 3  # int8 products per chunk (`Int8Rows.logit_chunks`)
# Beside a vocabulary made of image embeddings: the model whose space they are in (`write_space`).
SPACE_FILE = "embedding_space.json"
# The same model's probes agree to > 0.99 at any precision; different spaces gave < 0.2 (taxoclip-mini
# vs its random init).
SAME_SPACE = 0.9
_STORAGE = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16, torch.int8: np.int8}


class VocabularyError(TaxoclipError, ValueError):
    """A vocabulary that cannot be found or read, or a subset that does not match it."""


class TextBank:
    """Class embeddings [N, D] and the table describing each row."""

    def __init__(self, embeddings: torch.Tensor, table: pd.DataFrame, *, name: str = "",
                 index: np.ndarray | None = None, cache_dir: Path | None = None, scales: torch.Tensor | None = None):
        if embeddings.ndim != 2 or len(table) != embeddings.shape[0]:
            raise VocabularyError(f"bank {name}: {tuple(embeddings.shape)} embeddings for {len(table)} table rows")
        if (embeddings.dtype == torch.int8) != (scales is not None):
            raise VocabularyError(f"bank {name}: int8 embeddings need one scale per row (and only they have scales)")
        self._emb = embeddings
        self._scales = scales  # int8 banks: row i is _emb[i] * _scales[i]
        self._table_all = table
        self._index = index
        self.name = name
        self.cache_dir = cache_dir
        self._table: pd.DataFrame | None = None
        self._groups: dict = {}  # rank -> (codes, groups); ('parent', rank) -> genus-to-rank codes
        self._packs: Int8Rows | None = None  # int8 rows packed for the CPU's int8 product (`pack_int8`)

    # ----- description ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index) if self._index is not None else self._emb.shape[0]

    def __repr__(self) -> str:
        return f"TextBank({self.name!r}, n={len(self)}, dim={self.dim}, dtype={str(self.dtype).replace('torch.', '')})"

    @property
    def dim(self) -> int:
        return self._emb.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self._emb.dtype

    @property
    def is_taxonomic(self) -> bool:
        return all(c in self._table_all.columns for c in RANK_COLUMNS)

    @property
    def table(self) -> pd.DataFrame:
        """One row per class: the rank columns and `common_name` (taxa) or `label` (custom lists)."""
        if self._table is None:
            t = self._table_all if self._index is None else self._table_all.iloc[self._index]
            self._table = t.reset_index(drop=True)
        return self._table

    @property
    def labels(self) -> list[str]:
        if "label" in self.table.columns:
            return self.table["label"].tolist()
        return [" ".join(p for p in r if p) for r in self.table[RANK_COLUMNS + ["common_name"]].itertuples(index=False)]

    def taxon(self, i: int) -> Taxon:
        row = self.table.iloc[int(i)]
        return Taxon.from_ranks([row[c] for c in RANK_COLUMNS], row.get("common_name", ""))

    def embeddings(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """All rows as one tensor (materialised; for small banks and analyses)."""
        return torch.cat([c.to(dtype, copy=True) for _, c in self._chunks()]) if len(self) else \
            torch.empty(0, self.dim, dtype=dtype)

    def label_data(self) -> pd.DataFrame:
        """pybioclip's `get_label_data`: ranks, `species` binomial and `common_name` per row."""
        t = self.table
        if not self.is_taxonomic:
            return t.copy()
        out = t[RANK_COLUMNS[:-1]].copy()
        out["species_epithet"] = t["species_epithet"]
        out["species"] = _binomials(t)
        out["common_name"] = t["common_name"]
        return out

    def to(self, device: torch.device | str) -> "TextBank":
        """The same bank with its vectors on `device` (a GPU keeps the vocabulary resident)."""
        dev = torch.device(device)
        if dev.type == "cpu" or self._emb.device == dev:
            return self
        return TextBank(self._emb.to(dev), self._table_all, name=self.name, index=self._index,
                        scales=None if self._scales is None else self._scales.to(dev))

    # ----- subsets ---------------------------------------------------------------------------
    def subset(self, keep: np.ndarray | Sequence[bool] | Sequence[int]) -> "TextBank":
        """Rows selected by a boolean mask or by positions; shares storage with this bank."""
        keep = np.asarray(keep)
        pos = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
        if keep.dtype == bool and len(keep) != len(self):
            raise VocabularyError(f"subset mask has {len(keep)} entries, bank {self.name} has {len(self)} rows")
        if len(pos) == 0:
            raise VocabularyError(f"subset of {self.name} is empty")
        base = pos if self._index is None else self._index[pos]
        return TextBank(self._emb, self._table_all, name=f"{self.name}[subset {len(pos)}]", index=base,
                        scales=self._scales)

    def concat(self, other: "TextBank", name: str | None = None) -> "TextBank":
        """This bank's rows, then `other`'s, in one bank (in memory): one softmax over both.

        Rows are kept as given, so `other`'s may carry a weight in their length (prototypes
        scaled to compete with texts). An int8 bank stays int8 (`other` is quantised per row)."""
        if other.dim != self.dim:
            raise VocabularyError(f"cannot join {other.name} ({other.dim}-d) to {self.name} ({self.dim}-d)")
        if not (self.is_taxonomic and other.is_taxonomic):
            raise VocabularyError(f"only taxa vocabularies can be joined ({self.name}, {other.name})")
        pos = torch.from_numpy(self._index) if self._index is not None else slice(None)
        theirs = other.embeddings(torch.float32)
        if self._scales is not None:
            scales = theirs.abs().amax(dim=1).clamp_min(1e-12) / 127.0
            emb = torch.cat([self._emb[pos], torch.round(theirs / scales[:, None]).clamp_(-127, 127).to(torch.int8)])
            scales = torch.cat([self._scales[pos], scales])
        else:
            emb, scales = torch.cat([self.embeddings(self.dtype), theirs.to(self.dtype)]), None
        table = pd.concat([self.table[TAXA_COLUMNS].astype(str), other.table[TAXA_COLUMNS].astype(str)],
                          ignore_index=True)
        return TextBank(emb, table, name=name or f"{self.name}+{other.name}", scales=scales)

    def mask(self, rank: Rank | str, values: Iterable[str]) -> np.ndarray:
        """Which rows have one of `values` at `rank`; unknown values are an error (as in pybioclip)."""
        r = Rank.parse(rank)
        if not self.is_taxonomic:
            raise VocabularyError(f"bank {self.name} has no taxonomy to filter by {r.label}")
        column = _binomials(self.table) if r is Rank.SPECIES else self.table[RANK_COLUMNS[r]]
        wanted = pd.Series([str(v).strip() for v in values], dtype=object)
        unknown = wanted[~wanted.isin(set(column))]
        if len(unknown):
            shown = ", ".join(unknown.head(10)) + (" …" if len(unknown) > 10 else "")
            raise VocabularyError(f"unknown {r.label} in {self.name}: {shown}")
        return column.isin(set(wanted)).to_numpy(dtype=bool)

    def where(self, rank: Rank | str, values: Iterable[str]) -> "TextBank":
        """Rows whose value at `rank` is one of `values`."""
        return self.subset(self.mask(rank, values))

    def subset_from_csv(self, path: str | os.PathLike) -> "TextBank":
        """pybioclip's `--subset` file: a CSV whose first column is named after a rank."""
        return self.where(*read_subset_csv(path))

    # ----- scoring ---------------------------------------------------------------------------
    def _chunks(self, rows: int | None = None):
        """Consecutive blocks of rows, each valid until the next is asked for.

        A cached bank is read with pread into one reused buffer: the 1.3 GB vocabulary then
        lives in the shared page cache, not in this process's RSS, and no block pays for
        fresh pages (page faults on a new 100 MB buffer cost more than the copy itself)."""
        for s, block, scales in self._blocks(rows):
            yield s, block if scales is None else block.mul_(scales[:, None])

    def _blocks(self, rows: int | None = None):
        """(first row, rows as stored or, for an int8 bank, as floats not yet times their scales,
        the scales or None) per block; the rows share one reused buffer, valid until the next
        block. A scan multiplies its [B, rows] logits by the scales rather than the [rows, D]
        rows: D / B times fewer products, and one pass over the rows instead of two."""
        if self._scales is not None:
            yield from self._int8_blocks(rows)
            return
        rows = rows or CHUNK_ROWS
        n = len(self)
        on_disk = self.cache_dir is not None and self._index is None and self._emb.device.type == "cpu"
        path = self.cache_dir / "embeddings.bin" if on_disk else None
        fd = os.open(path, os.O_RDONLY) if path is not None and path.exists() else None
        buf = torch.empty(min(rows, n), self.dim, dtype=self.dtype) if fd is not None else None
        try:
            for s in range(0, n, rows):
                e = min(n, s + rows)
                if fd is not None:
                    block = buf[: e - s]
                    view = block.view(torch.int16) if self.dtype == torch.bfloat16 else block
                    _pread_into(fd, memoryview(view.numpy()).cast("B"), s * self.dim * block.element_size())
                    yield s, block, None
                elif self._index is None:
                    yield s, self._emb[s:e], None
                else:
                    yield s, self._emb[torch.from_numpy(self._index[s:e]).to(self._emb.device)], None
        finally:
            if fd is not None:
                os.close(fd)

    def _int8_blocks(self, rows: int | None = None):
        rows = rows or CHUNK_ROWS
        n = len(self)
        wide = torch.empty(min(rows, n), self.dim, device=self._emb.device)
        for s in range(0, n, rows):
            e = min(n, s + rows)
            where = slice(s, e) if self._index is None else torch.from_numpy(self._index[s:e]).to(self._emb.device)
            yield s, wide[: e - s].copy_(self._emb[where]), self._scales[where]

    def _rows(self, positions: torch.Tensor) -> torch.Tensor:
        flat = positions.reshape(-1).cpu().numpy()
        if self._index is not None:
            flat = self._index[flat]
        pos = torch.from_numpy(np.ascontiguousarray(flat)).to(self._emb.device)
        return self._widen(self._emb[pos], pos).reshape(*positions.shape, self.dim)

    def _widen(self, rows: torch.Tensor, where) -> torch.Tensor:
        """Stored rows -> the float rows they stand for (int8 rows times their scales)."""
        return rows if self._scales is None else rows.float().mul_(self._scales[where][:, None])

    def _compute_dtype(self, device: torch.device) -> torch.dtype:
        """bf16 products where the CPU has native bf16 and the bank is bf16; fp32 elsewhere.

        (A bf16 or fp16 product rounds its output, so those logits are only a first pass.)
        """
        return torch.bfloat16 if device.type == "cpu" and self.dtype == torch.bfloat16 else torch.float32

    def pack_int8(self) -> bool:
        """Pack a large int8 bank's rows for the CPU's int8 matrix product (`Int8Rows`; ~0.2 s
        for 300K rows, once), so that small batches, such as a server's, scan 2-3x faster. Returns
        whether the bank is packed (it needs int8 rows in CPU memory and FBGEMM)."""
        if self._packs is None and self._scales is not None and self._emb.device.type == "cpu" \
                and len(self) >= CHUNK_ROWS and Int8Rows.available():
            self._packs = Int8Rows(self._emb, self._scales, self._index, CHUNK_ROWS)
        return self._packs is not None

    def _int8_packs(self, feats: torch.Tensor) -> "Int8Rows | None":
        """The packed rows, for a batch small enough to gain from them (larger ones use the float
        product: at 64 photos both cost ~2 ms per photo)."""
        small = feats.device.type == "cpu" and feats.shape[0] <= INT8_MAX_BATCH
        return self._packs if small else None

    def _approximate(self, feats: torch.Tensor) -> bool:
        """Whether a scan's logits are a first pass (bf16 or int8 products) whose best candidates
        are rescored in fp32, rather than exact."""
        return self._compute_dtype(feats.device) != torch.float32 or self._int8_packs(feats) is not None

    def _candidates(self, feats: torch.Tensor, k: int) -> int:
        """Rows a scan keeps to rescore in fp32 for the best `k`: k when its logits are exact; the
        int8 product's (~1e-5 logit off) are ranked right but for near-ties; bf16's need many more."""
        if self._compute_dtype(feats.device) != torch.float32:
            return max(4 * k, 64)
        return k + 16 if self._int8_packs(feats) is not None else k

    def _logit_chunks(self, feats: torch.Tensor, scale: float):
        packs = self._int8_packs(feats)
        if packs is not None:
            yield from packs.logit_chunks(feats.float() * scale)
            return
        f = (feats.float() * scale).to(self._compute_dtype(feats.device))  # scaled once, not every chunk
        out = None  # full chunks' logits share one buffer (valid until the next chunk, like the rows)
        for s, rows, scales in self._blocks():
            rows = rows.to(feats.device, non_blocking=True)
            if rows.dtype != f.dtype:
                rows = rows.to(f.dtype)
            if f.dtype == torch.float32 and rows.shape[0] == CHUNK_ROWS:
                out = torch.empty(f.shape[0], CHUNK_ROWS, device=f.device) if out is None else out
                logits = torch.mm(f, rows.T, out=out)
            else:
                logits = (f @ rows.T).float()
            yield s, logits if scales is None else logits.mul_(scales.to(f.device, non_blocking=True))

    def _scan(self, feats: torch.Tensor, scale: float, n_candidates: int):
        """One pass over the bank: log-partition and the best `n_candidates` rows, exactly in fp32.

        Returns (lse [B], cand_logits [B, M] exact, cand_pos [B, M]), M = min(n_candidates, N).
        """
        f32 = feats.float()
        device = feats.device
        B = f32.shape[0]
        low = self._approximate(feats)
        parts, vals, pos = [], [], []
        for s, logits in self._logit_chunks(f32, scale):
            parts.append(torch.logsumexp(logits, 1))
            if n_candidates:
                v, i = logits.topk(min(n_candidates, logits.shape[1]), dim=1)
                vals.append(v)
                pos.append(i + s)
        lse = torch.logsumexp(torch.stack(parts, 1), 1) if parts else torch.full((B,), float("-inf"), device=device)
        cand_v = torch.cat(vals, 1) if vals else torch.empty(B, 0, device=device)
        cand_i = torch.cat(pos, 1) if pos else torch.empty(B, 0, dtype=torch.long, device=device)
        if cand_v.shape[1] > n_candidates:
            cand_v, j = cand_v.topk(n_candidates, dim=1)
            cand_i = cand_i.gather(1, j)
        if low and cand_v.shape[1]:  # rescore candidates in fp32 and correct the partition function with them
            exact = torch.einsum("bd,bmd->bm", f32, self._rows(cand_i).to(device).float()) * scale
            shift = (torch.exp(exact - lse[:, None]).double() - torch.exp(cand_v - lse[:, None]).double()).sum(1)
            lse = lse + torch.log1p(shift).float()
            cand_v = exact
        return lse, cand_v, cand_i

    @torch.inference_mode()
    def top_k(self, feats: torch.Tensor, k: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Best `k` rows per image: (probabilities [B, k'], positions [B, k']), k' = min(k, N)."""
        k = _check_k(k, len(self))
        lse, v, i = self._scan(feats, scale, self._candidates(feats, k))
        v, order = v.topk(k, dim=1)
        return torch.exp(v - lse[:, None]).cpu(), i.gather(1, order).cpu()

    @torch.inference_mode()
    def probabilities(self, feats: torch.Tensor, scale: float) -> torch.Tensor:
        """The full softmax [B, N] (for small banks, such as custom label lists)."""
        rows = self.embeddings(torch.float32).to(feats.device)
        return torch.softmax(feats.float() @ rows.T * scale, dim=1).cpu()

    @torch.inference_mode()
    def rollup(self, feats: torch.Tensor, rank: Rank | str, k: int, scale: float,
               min_prob: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
        """Best `k` taxa at a higher rank: each scores the summed probability of its rows.

        Rows with probability <= `min_prob` are left out of the sums, as pybioclip does.
        Returns (probabilities [B, k'], group ids [B, k']); `groups(rank)` describes the ids.
        """
        r = Rank.parse(rank)
        codes, groups = self.groups(r)
        k = _check_k(k, len(groups))
        lse, cand_v, cand_i = self._scan(feats, scale, self._candidates(feats, 0))
        acc = self._group_sums(feats, scale, codes, len(groups), lse, cand_v, cand_i, min_prob)
        v, g = acc.float().topk(k, dim=1)
        return v.cpu(), g.cpu()

    @torch.inference_mode()
    def masses(self, feats: torch.Tensor, scale: float, n_rows: int, n_groups: int
               ) -> tuple[torch.Tensor, torch.Tensor, dict[Rank, tuple[torch.Tensor, torch.Tensor]]]:
        """The best rows and the best groups at every higher rank, from one partition function.

        What a decision needs (`taxoclip.decide`), in two passes over the bank instead of one
        roll-up per rank: genus sums are accumulated once and folded up the tree.
        Returns (row probabilities [B, n'], row positions [B, n'], {rank: (probabilities [B, m'],
        group ids [B, m'])} for kingdom … genus); nothing is left out of the sums.
        """
        n = _check_k(n_rows, len(self))
        lse, cand_v, cand_i = self._scan(feats, scale, self._candidates(feats, n))
        v, order = cand_v.topk(n, dim=1)
        row_p, row_i = torch.exp(v - lse[:, None]).cpu(), cand_i.gather(1, order).cpu()
        codes, genera = self.groups(Rank.GENUS)
        genus_p = self._group_sums(feats, scale, codes, len(genera), lse, cand_v, cand_i, 0.0)
        out = {}
        for r in list(Rank)[: Rank.GENUS + 1]:
            if r is Rank.GENUS:
                acc = genus_p
            else:
                parent, groups = self._parent_codes(r)
                acc = torch.zeros(genus_p.shape[0], len(groups), dtype=torch.float64, device=genus_p.device)
                acc.index_add_(1, parent.to(genus_p.device), genus_p)
            p, g = acc.float().topk(min(n_groups, acc.shape[1]), dim=1)
            out[r] = (p.cpu(), g.cpu())
        return row_p, row_i, out

    def _group_sums(self, feats, scale, codes, n_groups, lse, cand_v, cand_i, min_prob) -> torch.Tensor:
        """Summed probability of each group [B, n_groups] (float64), in one pass over the bank."""
        low = self._approximate(feats)
        acc = torch.zeros(feats.shape[0], n_groups, dtype=torch.float64, device=feats.device)
        codes = codes.to(feats.device)
        for s, logits in self._logit_chunks(feats.float(), scale):
            e = s + logits.shape[1]
            if low and cand_v.shape[1]:  # use the fp32 logits of the candidates that fall in this chunk
                b, j = torch.nonzero((cand_i >= s) & (cand_i < e), as_tuple=True)
                logits[b, cand_i[b, j] - s] = cand_v[b, j]
            p = torch.exp(logits - lse[:, None])
            p = torch.where(p > min_prob, p, 0.0).double()
            acc.index_add_(1, codes[s:e], p)
        return acc

    def _parent_codes(self, rank: Rank) -> tuple[torch.Tensor, pd.DataFrame]:
        """The group at `rank` of every genus group, and the groups at `rank`."""
        key = ("parent", int(rank))
        if key not in self._groups:
            genus_codes, genera = self.groups(Rank.GENUS)
            codes, groups = self.groups(rank)
            parent = torch.zeros(len(genera), dtype=torch.int64)
            parent[genus_codes] = codes  # a genus group lies in exactly one group of each higher rank
            self._groups[key] = (parent, groups)
        return self._groups[key]

    def groups(self, rank: Rank | str) -> tuple[torch.Tensor, pd.DataFrame]:
        """Group id of every row at `rank` and a table of the groups (rank columns up to it).

        Rows group by their full lineage down to the rank, so two families of the same name
        under different orders stay apart (pybioclip joins the names the same way).
        """
        r = Rank.parse(rank)
        if r not in self._groups:
            if not self.is_taxonomic:
                raise VocabularyError(f"bank {self.name} has no taxonomy to group by {r.label}")
            stored = self.cache_dir / f"groups-{r.label}" if self.cache_dir and self._index is None else None
            if stored is not None and (stored / "codes.npy").exists():
                codes = np.load(stored / "codes.npy")
                table = _read_arrow_parquet(stored / "groups.parquet")
            else:
                codes, table = _group(self.table, r)
                if stored is not None:
                    _save_groups(stored, codes, table)
            self._groups[r] = (torch.from_numpy(codes.astype(np.int64)), table)
        return self._groups[r]

    def save_published(self, folder: str | os.PathLike) -> Path:
        """Write the bank in the published layout (`txt_emb_species.npy` [D, N] float32 + `.json`).

        A model directory with such an `embeddings/` folder predicts over it with no flags,
        as bioclip-2 does with TreeOfLife-200M; `--vocabulary FOLDER` reads it too.
        """
        from .durable import atomic_file

        if not self.is_taxonomic:
            raise VocabularyError(f"bank {self.name} holds labels, not taxa; the published layout needs ranks")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(folder / EMB_FILE) as fh:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": True,
                      "shape": (self.dim, len(self))}
            np.lib.format.write_array_header_1_0(fh, header)
            for _, block in self._chunks():  # column-major [D, N] = row-major [N, D]: stream rows
                fh.write(block.float().cpu().numpy().tobytes())
        entries = [Taxon.from_ranks([r[c] for c in RANK_COLUMNS], r["common_name"]).to_tol_entry()
                   for r in self.table[TAXA_COLUMNS].to_dict("records")]
        with atomic_file(folder / NAMES_FILE) as fh:
            fh.write(json.dumps(entries, ensure_ascii=False).encode("utf-8"))
        return folder

    def save_compact(self, folder: str | os.PathLike) -> Path:
        """Write the bank as int8 rows with a scale each (`vocabulary.safetensors`) and its table
        (`vocabulary.parquet`): a quarter of float32's size, for vocabularies shipped in a package.

        Rows are L2-normalised, so symmetric per-row quantisation keeps each cosine within ~1e-3.
        """
        from safetensors.torch import save_file

        from .durable import atomic_file

        if not self.is_taxonomic:
            raise VocabularyError(f"bank {self.name} holds labels, not taxa; a vocabulary needs ranks")
        emb = self.embeddings(torch.float32)
        scales = emb.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        q = torch.round(emb / scales[:, None]).clamp_(-127, 127).to(torch.int8)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (COMPACT_EMB + ".tmp")
        save_file({"embeddings": q.contiguous(), "scales": scales.float().contiguous()}, str(tmp))
        tmp.replace(folder / COMPACT_EMB)
        with atomic_file(folder / COMPACT_TAXA) as fh:
            self.table[TAXA_COLUMNS].to_parquet(fh, index=False, compression="zstd")
        return folder

    # ----- constructors ----------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, embeddings: np.ndarray | torch.Tensor, table: pd.DataFrame | Sequence[str],
                    name: str = "custom") -> "TextBank":
        emb = torch.as_tensor(np.asarray(embeddings) if not isinstance(embeddings, torch.Tensor) else embeddings)
        if not isinstance(table, pd.DataFrame):
            table = pd.DataFrame({"label": list(table)})
        return cls(emb, table.reset_index(drop=True), name=name)

    @classmethod
    def from_published(cls, source: str | os.PathLike | None = None, *, model: "ClipModel | str | None" = None,
                       dtype: torch.dtype | None = None) -> "TextBank":
        """The Tree-of-Life vocabulary of a model (or at `source`), converted once and cached.

        `source`: None (the model's own, from its card), an HF dataset repo
        (`imageomics/TreeOfLife-200M` or `hf-dataset:…`), a directory holding
        `txt_emb_species.npy`/`.json` (or an `embeddings/` folder with them), or the .npy path.
        `model` is a loaded model or a model id (only its card is read).
        `dtype` defaults to the model's precision (bf16 on most CPUs, fp32 for exact runs).
        """
        from .models import find_card, resolve

        card = find_card(model) if isinstance(model, str) else getattr(model, "card", None)
        model_id = model if isinstance(model, str) else getattr(model, "id", None)
        if source is None and not (card and card.vocabulary_repo) and model is not None:
            # a model directory's own embeddings/ (what `taxoclip train export` writes)
            source = (resolve(model) if isinstance(model, str) else model.source).vocabulary
        loaded = model if not isinstance(model, str) else None
        explicit = dtype
        dtype = dtype or (loaded.dtype if loaded is not None else torch.float32)
        if dtype not in _STORAGE:
            raise VocabularyError(f"unsupported bank dtype {dtype}")
        from .models.loading import file_fingerprint

        compact = _compact_files(source)
        if compact is not None:  # int8 as shipped, unless a precision is asked for
            files, kind, convert = compact, "compact", _convert_compact
            dtype = explicit or torch.int8
        else:
            files, kind, convert = _published_files(source, card, model_id), "published", _convert_published
        key = hash_key(kind, *[file_fingerprint(f) for f in files], str(dtype))
        with cache_entry("banks", key) as (final, tmp):
            if tmp is not None:
                convert(*files, tmp, dtype)
                release_memory()  # the conversion's transient tables and tensors, back to the OS
        bank = cls._open(final, name=str(source or (card.vocabulary_repo if card else files[0])))
        if loaded is not None and bank.dim != loaded.embed_dim:
            raise VocabularyError(f"vocabulary {bank.name} has {bank.dim}-d embeddings but model {loaded.id} "
                                  f"makes {loaded.embed_dim}-d ones")
        if loaded is not None:
            check_space(files[0].parent, loaded)
        return bank

    @classmethod
    def _open(cls, path: Path, name: str) -> "TextBank":
        meta = json.loads((path / "meta.json").read_text())
        dtype = getattr(torch, meta["dtype"])
        n, d = meta["shape"]
        raw = np.memmap(path / "embeddings.bin", dtype=_STORAGE[dtype], mode="r", shape=(n, d)) if n else \
            np.zeros((0, d), dtype=_STORAGE[dtype])
        with warnings.catch_warnings():  # read-only memory map: we never write to it
            warnings.simplefilter("ignore", UserWarning)
            emb = torch.from_numpy(raw)
        emb = emb.view(torch.bfloat16) if dtype == torch.bfloat16 else emb
        scales = torch.from_numpy(np.fromfile(path / "scales.bin", dtype=np.float32)) if dtype == torch.int8 else None
        table = _read_arrow_parquet(path / "taxa.parquet")
        return cls(emb, table, name=name, cache_dir=path, scales=scales)

    @classmethod
    def from_texts(cls, model: "ClipModel", texts: Sequence[str], table: pd.DataFrame | None = None, *,
                   templates: Sequence[str] | str = "openai", name: str = "custom",
                   progress: bool | None = None) -> "TextBank":
        """Embed each text through the templates; a class is the renormalised mean (cached)."""
        texts = [str(t).strip() for t in texts]
        if not texts:
            raise VocabularyError("no classes given")
        tpl = list(apply_templates("{}", templates))
        table = pd.DataFrame({"label": texts}) if table is None else table.reset_index(drop=True)
        key = hash_key("texts", model.fingerprint, model.id, str(model.dtype), tpl, texts)
        with cache_entry("banks", key) as (final, tmp):
            if tmp is not None:
                emb = _embed_classes(model, texts, tpl, progress)
                _write_bank(tmp, emb, table, torch.float32)
        return cls._open(final, name=name)

    @classmethod
    def from_labels(cls, model: "ClipModel", labels: Sequence[str], *, templates: Sequence[str] | str = "openai",
                    name: str = "labels") -> "TextBank":
        """A custom label list (pybioclip's `--cls`)."""
        return cls.from_texts(model, labels, templates=templates, name=name)

    @classmethod
    def from_taxa(cls, model: "ClipModel", taxa: pd.DataFrame | str | os.PathLike | Sequence[Taxon], *,
                  templates: Sequence[str] | str | None = None, text: str | None = None,
                  name: str | None = None, progress: bool | None = None) -> "TextBank":
        """A bank for any taxa table (CSV/Parquet with rank columns and `common_name`).

        Each class text is `text`: "vocabulary" ("<7 ranks> <common name>", as in the published
        vocabularies) or a caption type (`taxon`, `taxon_com`, … as in training), through
        `templates`. Both default to the model card's choice (published vocabularies: the
        vocabulary text through the 80 OpenAI templates).
        """
        from .taxonomy import render_caption

        card = model.card
        text = text or (card.vocabulary_text if card else "vocabulary")
        templates = templates or (card.vocabulary_templates if card else "openai")
        label = name or (str(taxa) if isinstance(taxa, (str, os.PathLike)) else "taxa")
        taxa_list = _read_taxa(taxa)
        table = pd.DataFrame([{**dict(zip(RANK_COLUMNS, t.ranks)), "common_name": t.common} for t in taxa_list])
        texts = [t.vocabulary_text if text == "vocabulary" else render_caption(t, text) for t in taxa_list]
        return cls.from_texts(model, texts, table, templates=templates, name=label, progress=progress)


# ----- helpers -------------------------------------------------------------------------------
class Int8Rows:
    """An int8 bank's rows packed for the CPU's int8 matrix product (FBGEMM, through torch's
    quantized linear): a scan reads a quarter of the bytes of the float32 product and never widens.

    300,212 rows, 2 Zen 3 cores, ms per photo for the whole top-5 (`python bench/bench_scan.py`):

    | photos per batch | 1 | 9 | 16 | 32 | 64 |
    |---|---:|---:|---:|---:|---:|
    | int8 | 20.9 | 3.8 | 2.7-2.9 | 2.6-4.6 | 3.0 |
    | float32 | 33.9 | 10.4 | 5.1-6.1 | 2.8-3.7 | 2.9 |

    From about 32 photos both cost the same, so larger batches keep the float32 product. The
    logits are within ~1e-5 of the float32 product's (`logit_chunks`), and the best candidates
    are still rescored in fp32. Packing takes 0.2-0.4 s, once per bank.
    """

    _usable: bool | None = None

    def __init__(self, rows: torch.Tensor, scales: torch.Tensor, index: np.ndarray | None, chunk: int):
        n = rows.shape[0] if index is None else len(index)
        self.chunks: list[tuple[int, object, torch.Tensor]] = []
        with warnings.catch_warnings():  # torch calls quantized tensors deprecated; its kernels are what we use
            warnings.simplefilter("ignore", UserWarning)
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                pos = slice(s, e) if index is None else torch.from_numpy(np.ascontiguousarray(index[s:e]))
                q = torch._make_per_tensor_quantized_tensor(rows[pos].contiguous(), 1.0, 0)
                self.chunks.append((s, torch.ops.quantized.linear_prepack(q, None), scales[pos].clone()))

    def logit_chunks(self, feats: torch.Tensor):
        """(first row, [B, rows] logits) per chunk: features times rows, the rows' scales applied.

        The kernel rounds the features to 7 bits (`reduce_range`, as FBGEMM needs on AVX2), an
        error of ~0.1 logit; two more products of what each rounding lost take it to ~1e-5, the
        float32 product's own."""
        pieces = [feats]
        for _ in range(PASSES - 1):
            q_scale, q_zero = torch._choose_qparams_per_tensor(pieces[-1], True)  # the kernel's own choice
            pieces.append(pieces[-1] - torch.fake_quantize_per_tensor_affine(pieces[-1], q_scale, q_zero, 0, 127))
        for s, packed, scales in self.chunks:
            out = torch.ops.quantized.linear_dynamic(pieces[0], packed, True)
            for piece in pieces[1:]:
                out.add_(torch.ops.quantized.linear_dynamic(piece, packed, True))
            yield s, out.mul_(scales)

    @classmethod
    def available(cls) -> bool:
        """Whether this torch has a fast int8 product on this CPU (FBGEMM on x86) that computes right."""
        if cls._usable is None:
            cls._usable = False
            if torch.backends.quantized.engine in ("x86", "fbgemm"):
                try:
                    g = torch.Generator().manual_seed(0)
                    rows = torch.randint(-127, 128, (64, 32), dtype=torch.int8, generator=g)
                    f = torch.randn(3, 32, generator=g)
                    (_, got), = cls(rows, torch.ones(64), None, 64).logit_chunks(f)
                    cls._usable = bool(torch.allclose(got, f @ rows.float().T, atol=0.05 * f.abs().max() * 127))
                except (RuntimeError, AttributeError):
                    pass
        return cls._usable


def write_space(folder: str | os.PathLike, model: "ClipModel", **extra) -> Path:
    """Record in `folder` which model's image space its vectors live in (`SPACE_FILE`: the model
    id and its `space_probe`), for vocabularies made of image embeddings (prototypes)."""
    from .durable import write_atomic

    path = Path(folder) / SPACE_FILE
    write_atomic(path, json.dumps({"model": model.id, "dim": model.embed_dim,
                                   "probe": model.space_probe().tolist(), **extra}, indent=1).encode())
    return path


def read_space(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / SPACE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise VocabularyError(f"{path}: unreadable ({e})") from None


def check_space(folder: str | os.PathLike, model: "ClipModel") -> None:
    """Refuse, in one line, vectors that `write_space` recorded for another model's image space."""
    space = read_space(folder)
    if space is None or "probe" not in space:
        return
    probe = torch.tensor(space["probe"], dtype=torch.float32)
    here = model.space_probe()
    if probe.shape != here.shape or float((probe * here).sum(1).min()) < SAME_SPACE:
        raise VocabularyError(f"{folder} holds vectors from model {space.get('model')}'s embedding space, not "
                              f"{model.id}'s; rebuild them with this model (e.g. taxoclip prototypes build "
                              f"--model {model.id})")


def _check_k(k: int, n: int) -> int:
    if not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return min(int(k), n)


def _read_csv(path: str | os.PathLike, what: str) -> pd.DataFrame:
    """A user's CSV as text cells; `VocabularyError` naming it for anything unreadable."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except UnicodeDecodeError as e:
        raise VocabularyError(f"cannot read {what} {path}: not UTF-8 text (byte {e.start})") from None
    except (OSError, ValueError) as e:  # pandas' ParserError and EmptyDataError are ValueErrors
        raise VocabularyError(f"cannot read {what} {path}: {' '.join(str(e).split())}") from None


def read_subset_csv(path: str | os.PathLike) -> tuple[Rank, list[str]]:
    """(rank, values) from a CSV whose first column is named after a rank (pybioclip's `--subset`)."""
    df = _read_csv(path, "subset file")
    if df.shape[1] == 0:
        raise VocabularyError(f"subset file {path} has no columns")
    first = str(df.columns[0]).strip().lower()
    if first not in RANKS:
        raise VocabularyError(f"the first column of {path} is named {df.columns[0]!r} but must be one of {', '.join(RANKS)}")
    return Rank.parse(first), df.iloc[:, 0].tolist()


def read_bins_csv(path: str | os.PathLike) -> dict[str, str]:
    """label -> bin from a CSV whose first two columns are a label and its bin (pybioclip's `--bins`)."""
    df = _read_csv(path, "bins file")
    if df.shape[1] < 2:
        raise VocabularyError(f"bins file {path} needs two columns (label, bin); it has {df.shape[1]}")
    return dict(zip(df.iloc[:, 0], df.iloc[:, 1]))


def _read_arrow_parquet(path: Path) -> pd.DataFrame:
    """A table with Arrow-backed columns, one chunk each.

    Arrow strings: 867K taxa cost a few MB instead of ~250 MB of Python objects. One chunk:
    Arrow's `take` of a few rows from a 3-chunk column of 300K strings cost 0.35 ms, 40x that
    of one chunk (it joins the chunks first), and result rows take 8 columns per batch.
    """
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path).read()  # one chunk per row group (`read_table` splits them further)
    if any(column.num_chunks > 1 for column in table.columns):
        table = table.combine_chunks()
    return table.to_pandas(types_mapper=pd.ArrowDtype)


def take_values(column: pd.Series, positions: np.ndarray) -> list:
    """`column[positions]` as a list, for a batch's result rows: through Arrow for the Arrow-backed
    columns of a bank's table (0.02 ms a column for 320 rows, against 0.11 through pandas' `take`
    on a one-chunk column and 0.5 on a three-chunk one)."""
    values = column.array
    if hasattr(values, "__arrow_array__"):
        import pyarrow as pa

        return pa.array(values).take(positions).to_pylist()
    return column.to_numpy()[positions].tolist()


def _pread_into(fd: int, buf: memoryview, offset: int) -> None:
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n <= 0:
            raise VocabularyError(f"vocabulary cache file ended early (fd {fd}); delete the cache entry and retry")
        done += n


def _group(t: pd.DataFrame, r: Rank) -> tuple[np.ndarray, pd.DataFrame]:
    cols = RANK_COLUMNS[: r + 1] if r is not Rank.SPECIES else RANK_COLUMNS
    key = t[cols[0]].astype(str)
    for c in cols[1:]:
        key = key + "\x1f" + t[c].astype(str)
    codes, _ = pd.factorize(key, sort=False)
    first = pd.Series(np.arange(len(codes))).groupby(codes).first().to_numpy()
    extra = ["common_name"] if r is Rank.SPECIES and "common_name" in t.columns else []
    return codes.astype(np.int32), t.iloc[first][cols + extra].reset_index(drop=True)


def _save_groups(path: Path, codes: np.ndarray, table: pd.DataFrame) -> None:
    """Persist group ids beside a cached bank (written to a temporary name, then renamed)."""
    try:
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        np.save(tmp / "codes.npy", codes)
        table.to_parquet(tmp / "groups.parquet", index=False)
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache is fine: we recompute next time
        log.debug("cannot cache groups in %s: %s", path, e)


def _binomials(t: pd.DataFrame) -> pd.Series:
    ep = t["species_epithet"].astype(str)
    return (t["genus"].astype(str) + " " + ep).where(ep != "", "")


def _read_taxa(taxa) -> list[Taxon]:
    if isinstance(taxa, (str, os.PathLike)):
        path = Path(taxa)
        try:
            df = pd.read_parquet(path) if path.suffix == ".parquet" else _read_csv(path, "taxa table")
        except VocabularyError:
            raise
        except (OSError, ValueError) as e:
            raise VocabularyError(f"cannot read taxa table {path}: {' '.join(str(e).split())}") from None
        where = str(path)
    elif isinstance(taxa, pd.DataFrame):
        df, where = taxa, "taxa table"
    else:
        return list(taxa)
    cols = {c.lower() for c in df.columns}
    if not cols & {"kingdom", "phylum", "class", "order", "family", "genus", "species", "scientificname",
                   "scientific_name", "specificepithet", "species_epithet"}:
        raise VocabularyError(f"{where} has no rank columns (kingdom … species or scientific_name); "
                              f"columns are {', '.join(map(str, df.columns))}")
    out = []
    for i, rec in enumerate(df.to_dict("records")):
        try:
            t = Taxon.from_record(rec)
        except ValueError as e:
            raise VocabularyError(f"{where}, row {i + 2}: {e}") from None
        if t.empty:
            raise VocabularyError(f"{where}, row {i + 2}: no rank is filled")
        out.append(t)
    if not out:
        raise VocabularyError(f"{where} has no rows")
    return out


def _embed_classes(model: "ClipModel", texts: list[str], templates: list[str], progress: bool | None) -> torch.Tensor:
    from tqdm.auto import tqdm

    per = max(1, 2048 // len(templates))
    out = []
    bar = tqdm(total=len(texts), unit="class", desc="embedding classes", leave=False,
               disable=None if progress is None else not progress)
    for i in range(0, len(texts), per):
        group = texts[i:i + per]
        prompts = [t.format(c) for c in group for t in templates]
        e = model.encode_text(prompts).reshape(len(group), len(templates), -1).mean(1)
        out.append(torch.nn.functional.normalize(e, dim=-1))
        bar.update(len(group))
    bar.close()
    return torch.cat(out)


def _write_bank(out: Path, emb: torch.Tensor, table: pd.DataFrame, dtype: torch.dtype) -> None:
    arr = emb.to(dtype).contiguous()
    raw = arr.view(torch.int16).numpy().view(np.uint16) if dtype == torch.bfloat16 else arr.numpy()
    raw.tofile(out / "embeddings.bin")
    table.to_parquet(out / "taxa.parquet", index=False)
    (out / "meta.json").write_text(json.dumps({"shape": list(arr.shape), "dtype": str(dtype).replace("torch.", "")}))


def _published_files(source, card, model_id) -> tuple[Path, Path]:
    from .models.loading import hf_file

    if source is None:
        if card is None or not card.vocabulary_repo:
            who = model_id or "no model"
            raise VocabularyError(f"model {who} has no published Tree-of-Life vocabulary; give one with "
                                  f"--vocabulary, or classify with --cls / --taxa")
        source = f"hf-dataset:{card.vocabulary_repo}"
    src = str(source)
    path = Path(src).expanduser()
    if path.is_dir():
        for d in (path, path / "embeddings"):
            if (d / EMB_FILE).is_file() and (d / NAMES_FILE).is_file():
                return d / EMB_FILE, d / NAMES_FILE
        raise VocabularyError(f"vocabulary directory {path} holds no {EMB_FILE} + {NAMES_FILE}")
    if path.suffix == ".npy":
        names = path.with_suffix(".json")
        if not path.is_file() or not names.is_file():
            raise VocabularyError(f"vocabulary {path}: need {path} and {names}")
        return path, names
    repo = src[len("hf-dataset:"):] if src.startswith("hf-dataset:") else src
    if repo.count("/") != 1:
        raise VocabularyError(f"vocabulary {src!r} is not a directory, a .npy file or a Hugging Face dataset id")
    try:
        return (hf_file(repo, f"embeddings/{EMB_FILE}", "dataset"), hf_file(repo, f"embeddings/{NAMES_FILE}", "dataset"))
    except FileNotFoundError as e:
        raise VocabularyError(f"vocabulary {repo}: {e}") from None


def _compact_files(source) -> tuple[Path, Path] | None:
    """The compact layout's two files, when `source` is a directory (or its `embeddings/`) holding them."""
    if source is None:
        return None
    path = Path(str(source)).expanduser()
    for d in (path, path / "embeddings"):
        if (d / COMPACT_EMB).is_file() and (d / COMPACT_TAXA).is_file():
            return d / COMPACT_EMB, d / COMPACT_TAXA
    return None


def _convert_compact(emb_path: Path, taxa_path: Path, out: Path, dtype: torch.dtype) -> None:
    """int8 rows x scales -> the cache's row-major bank in `dtype`, renormalised."""
    import pyarrow as pa
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(emb_path))
        q, scales = tensors["embeddings"], tensors["scales"]
        table = pd.read_parquet(taxa_path, dtype_backend="pyarrow")
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise VocabularyError(f"vocabulary {emb_path.parent} is damaged ({emb_path.name} / {taxa_path.name}: {e})") from None
    if q.ndim != 2 or q.dtype != torch.int8 or scales.shape != (q.shape[0],) or len(table) != q.shape[0]:
        raise VocabularyError(f"vocabulary {emb_path.parent} is damaged: {tuple(q.shape)} rows, "
                              f"{tuple(scales.shape)} scales, {len(table)} taxa")
    # Arrow strings throughout: as Python objects the 300K x 8 names took ~300 MB more, and made
    # the first run's peak 1.39 GB
    table = table[TAXA_COLUMNS].astype(pd.ArrowDtype(pa.string())).fillna("")
    if dtype == torch.int8:  # renormalised rows q * s / |q * s| = q / |q|: keep q, the scale becomes 1 / |q|
        wide = torch.empty(min(CHUNK_ROWS, len(q)), q.shape[1])  # one reused buffer, not a 150-MB float copy
        norms = torch.cat([wide[: len(rows)].copy_(rows).norm(dim=1) for rows in q.split(CHUNK_ROWS)])
        (1.0 / norms.clamp_min(1e-12)).numpy().astype(np.float32).tofile(out / "scales.bin")
        _write_bank(out, q, table, torch.int8)
    else:
        _write_bank(out, torch.nn.functional.normalize(q.float() * scales[:, None], dim=1), table, dtype)


def _published_entries(names, path: Path) -> list[tuple[str, ...]]:
    """`txt_emb_species.json` as (7 ranks, common name) tuples of text; a clear error for anything else."""
    if not isinstance(names, list):
        raise VocabularyError(f"{path}: expected a list of [[7 ranks], common name] entries, got {type(names).__name__}")
    out = []
    for i, entry in enumerate(names):
        ranks, common = entry if isinstance(entry, (list, tuple)) and len(entry) == 2 else (None, None)
        if not (isinstance(ranks, (list, tuple)) and len(ranks) == 7 and isinstance(common, (str, type(None)))
                and all(isinstance(r, (str, type(None))) for r in ranks)):
            raise VocabularyError(f"{path}: entry {i} is not [[7 rank names], common name]: {str(entry)[:80]!r}")
        out.append(tuple(r or "" for r in ranks) + (common or "",))
    return out


def _convert_published(npy: Path, names_path: Path, out: Path, dtype: torch.dtype) -> None:
    """[D, N] float32 .npy -> row-major [N', D] `dtype` without the all-zero columns.

    Reads with pread into a small buffer, so the 2.7 GB source never enters our RSS.
    """
    try:
        names = _published_entries(json.loads(names_path.read_text(encoding="utf-8")), names_path)
    except VocabularyError:
        raise
    except (OSError, ValueError) as e:
        raise VocabularyError(f"cannot read vocabulary names {names_path}: {e}") from None
    with open(npy, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, src_dtype = read_header(fh)
        except ValueError as e:
            raise VocabularyError(f"{npy} is not a .npy file: {e}") from None
        offset = fh.tell()
    if len(shape) != 2:
        raise VocabularyError(f"{npy}: expected a 2-d [dim, taxa] array, got shape {shape}")
    d, n = shape
    if len(names) != n:
        raise VocabularyError(f"{npy} has {n} columns but {names_path} lists {len(names)} taxa")
    item = src_dtype.itemsize
    block = 16384
    keep_all = np.zeros(n, dtype=bool)
    fd = os.open(npy, os.O_RDONLY)
    try:
        with open(out / "embeddings.bin", "wb") as dst:
            buf = np.empty((d, block), dtype=src_dtype)
            for s in range(0, n, block):
                c = min(block, n - s)
                if fortran:  # column-major: each taxon's vector is contiguous
                    rows = buf.reshape(-1)[: c * d].reshape(c, d)
                    os.preadv(fd, [memoryview(rows).cast("B")], offset + s * d * item)
                else:
                    for r in range(d):
                        os.preadv(fd, [memoryview(buf[r, :c]).cast("B")], offset + (r * n + s) * item)
                    rows = buf[:, :c].T
                rows = torch.from_numpy(rows).float().contiguous()  # torch's blocked transpose is fast
                keep = rows.abs().sum(1) > 0
                keep_all[s:s + c] = keep.numpy()
                kept = rows[keep].to(dtype)
                raw = kept.view(torch.int16).numpy() if dtype == torch.bfloat16 else kept.numpy()
                dst.write(raw.tobytes())
    finally:
        os.close(fd)
    idx = np.flatnonzero(keep_all)
    cols = list(zip(*[names[i] for i in idx])) if len(idx) else [[]] * 8
    table = pd.DataFrame({c: pd.Series(v, dtype=object).fillna("") for c, v in zip(TAXA_COLUMNS, cols)})
    table["source_index"] = idx.astype(np.int64)
    table.to_parquet(out / "taxa.parquet", index=False)
    (out / "meta.json").write_text(json.dumps({
        "shape": [int(len(idx)), int(d)], "dtype": str(dtype).replace("torch.", ""),
        "source": str(npy), "dropped_zero_columns": int(n - len(idx))}))
    if n - len(idx):
        log.info("vocabulary %s: dropped %d all-zero columns", npy, n - len(idx))
