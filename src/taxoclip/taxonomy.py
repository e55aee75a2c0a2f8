"""Taxonomy: ranks, taxa, every lineage format we read, and the caption texts we write.

A `Taxon` is seven ranks (kingdom … genus plus the specific epithet) and a common name.
The epithet is stored on its own; the binomial is derived (`Taxon.species`), so a record
that says "Malus domestica" and one that says "domestica" under genus Malus are the same
taxon. Empty interior ranks stay empty: "Animalia Chordata  Carnivora" keeps its gap.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

from .errors import InputError

__all__ = [
    "Rank", "RANKS", "Taxon", "TEXT_TYPES", "CAPTION_FILES", "render_caption", "captions",
    "OPENAI_TEMPLATES", "BIOCLIP_TEMPLATES", "TEMPLATE_SETS", "apply_templates",
    "parse_lineage", "normalize_kingdom", "TaxonError",
]


class TaxonError(InputError):
    """A rank name, lineage, rank list or record that does not describe a taxon (a ValueError too)."""


class Rank(enum.IntEnum):
    """The seven Linnaean ranks BioCLIP predicts at (values match pybioclip's `Rank`)."""

    KINGDOM = 0
    PHYLUM = 1
    CLASS = 2
    ORDER = 3
    FAMILY = 4
    GENUS = 5
    SPECIES = 6

    @property
    def label(self) -> str:
        return self.name.lower()

    def get_label(self) -> str:  # pybioclip's spelling
        return self.label

    def __str__(self) -> str:
        return self.label

    @classmethod
    def parse(cls, value: "Rank | str | int") -> "Rank":
        """Accept a Rank, its value, or its name in any case; a clear error otherwise."""
        if isinstance(value, Rank):
            return value
        if isinstance(value, int) and 0 <= value < len(cls):
            return cls(value)
        key = str(value).strip().upper()
        if key in cls.__members__:
            return cls[key]
        raise TaxonError(f"unknown rank {value!r}; expected one of {', '.join(r.label for r in cls)}")


RANKS: tuple[str, ...] = tuple(r.label for r in Rank)

_KINGDOM_SYNONYMS = {
    "metazoa": "Animalia",
    "animals": "Animalia",
    "viridiplantae": "Plantae",
    "archaeplastida": "Plantae",
    "chloroplastida": "Plantae",
    "plants": "Plantae",
    "fungi": "Fungi",
    "eumycota": "Fungi",
    "monera": "Bacteria",
    "eubacteria": "Bacteria",
}


def normalize_kingdom(name: str) -> str:
    """Map the kingdom names of NCBI, EOL and older backbones onto GBIF's."""
    key = name.strip().lower()
    return _KINGDOM_SYNONYMS.get(key, key.capitalize())


def _clean(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN from pandas
        return ""
    return " ".join(str(value).split())


@dataclass(frozen=True, order=True)
class Taxon:
    """Seven ranks and a common name; "" marks an unknown rank."""

    kingdom: str = ""
    phylum: str = ""
    cls: str = ""  # "class" is a keyword; `Taxon.get("class")` and `as_dict()` use the real name
    order: str = ""
    family: str = ""
    genus: str = ""
    epithet: str = ""
    common: str = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _clean(getattr(self, f.name)))

    # ----- views -------------------------------------------------------------------------
    @property
    def ranks(self) -> tuple[str, str, str, str, str, str, str]:
        """The seven rank values, the last being the specific epithet (pybioclip's layout)."""
        return (self.kingdom, self.phylum, self.cls, self.order, self.family, self.genus, self.epithet)

    @property
    def species(self) -> str:
        """The binomial "Genus epithet", or "" when the epithet is unknown."""
        return f"{self.genus} {self.epithet}".strip() if self.epithet else ""

    @property
    def rank(self) -> Rank | None:
        """The deepest rank that is filled."""
        for r in reversed(Rank):
            if self.ranks[r]:
                return r
        return None

    @property
    def empty(self) -> bool:
        return not any(self.ranks)

    def get(self, rank: Rank | str | int) -> str:
        """The value at a rank; at species rank that is the binomial."""
        r = Rank.parse(rank)
        return self.species if r is Rank.SPECIES else self.ranks[r]

    def truncate(self, rank: Rank | str | int) -> "Taxon":
        """The ancestor at `rank`: deeper ranks and the common name are dropped."""
        r = Rank.parse(rank)
        if r is Rank.SPECIES:
            return self
        vals = list(self.ranks[: r + 1]) + [""] * (6 - r)
        return Taxon(*vals, common="")

    def with_common(self, common: str) -> "Taxon":
        return replace(self, common=common)

    def as_dict(self) -> dict[str, str]:
        """pybioclip's keys: the ranks, `species_epithet`, the binomial `species` and `common_name`."""
        return {
            "kingdom": self.kingdom, "phylum": self.phylum, "class": self.cls, "order": self.order,
            "family": self.family, "genus": self.genus, "species_epithet": self.epithet,
            "species": self.species, "common_name": self.common,
        }

    # ----- names as the reference renders them --------------------------------------------
    @property
    def scientific_name(self) -> str:
        """Binomial if known; else the deepest known rank (how BioCLIP's `sci` text reads)."""
        if self.genus or self.epithet:
            return " ".join(f"{self.genus.capitalize()} {self.epithet.lower()}".split()).capitalize()
        deepest = self.rank
        return self.ranks[deepest].capitalize() if deepest is not None else ""

    @property
    def taxonomic_name(self) -> str:
        """The seven ranks joined by spaces, empty ranks skipped ("Animalia Chordata … concolor")."""
        parts = [v.capitalize() for v in self.ranks[:6]] + [self.epithet.lower()]
        return " ".join(p for p in parts if p)

    @property
    def tagged_name(self) -> str:
        """"kingdom Animalia phylum Chordata … species concolor", empty ranks skipped."""
        vals = [v.capitalize() for v in self.ranks[:6]] + [self.epithet.lower()]
        return " ".join(f"{name} {v}" for name, v in zip(RANKS, vals) if v)

    @property
    def common_or_scientific(self) -> str:
        """The common name, falling back as the reference shards do."""
        return self.common or self.scientific_name or self.taxonomic_name

    @property
    def vocabulary_text(self) -> str:
        """The class text of the published Tree-of-Life vocabulary: "<7 ranks> <common name>"."""
        return " ".join(p for p in (self.taxonomic_name, self.common) if p)

    # ----- parsers -------------------------------------------------------------------------
    @classmethod
    def from_ranks(cls, ranks: Sequence[str], common: str = "") -> "Taxon":
        """Seven values, kingdom … epithet (a binomial in the last slot is accepted)."""
        if not isinstance(ranks, (list, tuple)) or any(isinstance(v, (list, tuple, dict, set)) for v in ranks):
            raise TaxonError(f"expected 7 rank names (kingdom … species), got {ranks!r}")
        if isinstance(common, (list, tuple, dict, set)):
            raise TaxonError(f"expected a common name, got {common!r}")
        vals = [_clean(v) for v in ranks]
        if len(vals) != 7:
            raise TaxonError(f"expected 7 rank values (kingdom … species), got {len(vals)}: {list(ranks)!r}")
        genus, epithet = _split_species(vals[5], vals[6])
        return cls(*vals[:5], genus, epithet, common)

    @classmethod
    def from_tol_entry(cls, entry: Sequence[Any]) -> "Taxon":
        """One entry of the published `txt_emb_species.json`: `[[7 ranks], common]`."""
        try:
            ranks, common = entry
        except (TypeError, ValueError):
            raise TaxonError(f"not a vocabulary entry [[7 ranks], common name]: {entry!r}") from None
        return cls.from_ranks(ranks, common or "")

    def to_tol_entry(self) -> list:
        return [list(self.ranks), self.common]

    @classmethod
    def from_lineage(cls, text: str) -> "Taxon":
        """A semicolon lineage as MegaDetector and SpeciesNet write it; see `parse_lineage`."""
        return parse_lineage(text)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Taxon":
        """A row of a table, a JSON record or a Darwin Core occurrence (keys in any case).

        Ranks come from `kingdom` … `genus`; the epithet from `specificEpithet`/`species_epithet`,
        or from a binomial in `species`/`scientificName`/`scientific_name` (authorship dropped).
        A binomial whose genus disagrees with the `genus` column is an error, not a guess.
        """
        low = {str(k).strip().lower().replace("_", "").replace(" ", ""): v for k, v in record.items()}
        get = lambda *names: next((_clean(low[n]) for n in names if n in low and _clean(low[n])), "")
        ranks = [get("kingdom"), get("phylum"), get("class", "cls"), get("order"), get("family"), get("genus")]
        epithet = get("specificepithet", "speciesepithet", "epithet")
        binomial = get("species")
        if not binomial and not epithet:
            rank = get("taxonrank").lower()
            name = get("scientificname", "canonicalname", "acceptedscientificname")
            if name and rank in ("", "species", "subspecies", "variety", "form", "infraspecificname"):
                binomial = name
            elif name and rank in RANKS and not ranks[RANKS.index(rank)]:
                ranks[RANKS.index(rank)] = _canonical(name).split(" ")[0]
        genus, epithet = _split_species(ranks[5], binomial or epithet, binomial=bool(binomial))
        if ranks[0]:
            ranks[0] = normalize_kingdom(ranks[0])
        common = get("commonname", "vernacularname", "common")
        return cls(*ranks[:5], genus, epithet, common)


def _canonical(name: str) -> str:
    """Drop authorship and years: "Puma concolor (Linnaeus, 1771)" -> "Puma concolor"."""
    words = []
    for w in name.replace("(", " (").split():
        if words and (w[0].isupper() or w[0] in "(" or w[0].isdigit() or w in ("ex", "&", "et", "in")):
            break
        words.append(w)
    return " ".join(words)


def _split_species(genus: str, species: str, binomial: bool | None = None) -> tuple[str, str]:
    """Return (genus, epithet) from a genus column and a species value.

    `species` may be an epithet ("concolor") or a binomial ("Puma concolor"); when `binomial`
    is None the form is inferred: two or more words whose first is capitalised is a binomial.
    """
    species = _canonical(species) if species else ""
    if not species:
        return genus, ""
    words = species.split()
    is_binomial = binomial if binomial is not None else (len(words) >= 2 and words[0][:1].isupper())
    if binomial and len(words) == 1:
        # A lone word in a `species` column: an epithet if a genus is given, else a genus.
        return (genus, words[0].lower()) if genus else (words[0], "")
    if not is_binomial:
        return genus, species.lower()
    # Keep the specific epithet only; infraspecific names (subspecies, varieties) are dropped.
    first, rest = words[0], words[1:]
    epithet = " ".join(rest[:2] if rest[0] in ("×", "x") and len(rest) > 1 else rest[:1]).lower()
    if genus and first.lower() != genus.lower():
        raise TaxonError(f"species {species!r} is not in genus {genus!r}")
    return genus or first.capitalize(), epithet


_ID = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\d+|[0-9a-f]{32})$", re.I)
# Lineage layouts by field count once an id is removed: (rank slots, has common name).
_LINEAGE_LAYOUTS = {
    6: (("class", "order", "family", "genus", "species"), True),  # SpeciesNet
    7: (RANKS, False),
    8: (RANKS, True),
}


def parse_lineage(text: str) -> Taxon:
    """Parse "[id;]class;order;family;genus;species;common" (SpeciesNet) or the 7-rank form.

    Case-insensitive: "mammalia;carnivora;felidae;puma;concolor;puma" and the same in any
    case parse alike; names come back in canonical case (Genus capitalised, epithet lower).
    Accepted field counts (after an optional leading UUID or number): 6 (SpeciesNet, no
    kingdom or phylum), 7 (kingdom … species) and 8 (kingdom … species; common name).
    """
    parts = [p.strip() for p in str(text).strip().split(";")]
    if parts and _ID.match(parts[0]) and len(parts) - 1 in _LINEAGE_LAYOUTS:
        parts = parts[1:]
    if len(parts) not in _LINEAGE_LAYOUTS:
        raise TaxonError(
            f"cannot read lineage {text!r}: expected 6 (SpeciesNet), 7 or 8 ';'-separated fields, "
            f"optionally after an id, got {len(parts)}")
    slots, has_common = _LINEAGE_LAYOUTS[len(parts)]
    values = dict(zip(slots, parts))
    common = parts[-1] if has_common else ""
    ranks = [values.get(r, "").capitalize() for r in RANKS[:6]]
    if ranks[0]:
        ranks[0] = normalize_kingdom(ranks[0])
    species = values.get("species", "")
    genus, epithet = _split_species(ranks[5], species)
    return Taxon(*ranks[:5], genus.capitalize() if genus else "", epithet.lower(), common)


# ----- captions -----------------------------------------------------------------------------
# The text types of the TreeOfLife shards; training mixes the first five (plus the tag forms).
_CAPTIONS: dict[str, Callable[[Taxon], str]] = {
    "sci": lambda t: f"a photo of {t.scientific_name}.",
    "com": lambda t: f"a photo of {t.common_or_scientific}.",
    "taxon": lambda t: f"a photo of {t.taxonomic_name}.",
    "taxonTag": lambda t: f"a photo of {t.tagged_name}.",
    "sci_com": lambda t: f"a photo of {t.scientific_name} with common name {t.common_or_scientific}.",
    "taxon_com": lambda t: f"a photo of {t.taxonomic_name} with common name {t.common_or_scientific}.",
    "taxonTag_com": lambda t: f"a photo of {t.tagged_name} with common name {t.common_or_scientific}.",
    "scientific_name": lambda t: t.scientific_name,
    "taxonomic_name": lambda t: t.taxonomic_name,
    "common_name": lambda t: t.common_or_scientific,
}
TEXT_TYPES: tuple[str, ...] = ("sci", "com", "taxon", "taxonTag", "sci_com", "taxon_com", "taxonTag_com")
CAPTION_FILES: tuple[str, ...] = tuple(f"{k}.txt" for k in _CAPTIONS)


def render_caption(taxon: Taxon, text_type: str) -> str:
    """One caption of `taxon` in a text type (`sci`, `com`, `taxon`, … `common_name`)."""
    try:
        return _CAPTIONS[text_type](taxon)
    except KeyError:
        raise TaxonError(f"unknown text type {text_type!r}; expected one of {', '.join(_CAPTIONS)}") from None


def captions(taxon: Taxon) -> dict[str, str]:
    """All ten caption files of a TreeOfLife sample, keyed by file name (`sci.txt`, …)."""
    if taxon.empty:
        raise TaxonError("cannot caption a taxon with no ranks")
    return {f"{k}.txt": fn(taxon) for k, fn in _CAPTIONS.items()}


# ----- prompt templates ---------------------------------------------------------------------
def _openai_templates() -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


class _Templates:
    """Lazy template sets, so importing the taxonomy does not import open_clip."""

    def __getitem__(self, name: str) -> tuple[str, ...]:
        if name == "openai":
            return _openai_templates()
        if name == "bioclip":  # the paper's zero-shot protocol: 80 OpenAI templates + 1
            return _openai_templates() + ("a photo of {}.",)
        if name == "photo":
            return ("a photo of {}.",)
        if name == "none":
            return ("{}",)
        raise KeyError(name)

    def __contains__(self, name: str) -> bool:
        return name in ("openai", "bioclip", "photo", "none")

    def keys(self) -> tuple[str, ...]:
        return ("openai", "bioclip", "photo", "none")


TEMPLATE_SETS = _Templates()


def __getattr__(name: str):
    if name == "OPENAI_TEMPLATES":
        return TEMPLATE_SETS["openai"]
    if name == "BIOCLIP_TEMPLATES":
        return TEMPLATE_SETS["bioclip"]
    raise AttributeError(name)


def apply_templates(text: str, templates: Iterable[str] | str = "openai") -> list[str]:
    """Fill each template with `text`; `templates` is a set name or a list of "{}" strings."""
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise TaxonError(f"unknown template set {templates!r}; expected one of {', '.join(TEMPLATE_SETS.keys())}")
        templates = TEMPLATE_SETS[templates]
    return [t.format(text) for t in templates]
