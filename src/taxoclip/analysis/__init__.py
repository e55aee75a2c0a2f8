"""Emergent properties of an embedding space, measured on labelled photos (BioCLIP 2's claims):
the taxonomic hierarchy (`hierarchy`, `cluster_agreement`), traits kept apart from species
(`trait_orthogonality`, `trait_separation`), species ordered by a numeric trait
(`trait_ordering`), and pictures of it (`plots`). Each module's docstring defines its measures.

    taxoclip analyze traits ../shared/data/bio-mini/apple ../shared/data/bio-mini/bees --trait health
"""
from .hierarchy import cluster_agreement, hierarchy
from .ordering import trait_ordering
from .species import centroids
from .traits import trait_orthogonality, trait_separation

__all__ = ["centroids", "hierarchy", "cluster_agreement", "trait_orthogonality", "trait_separation",
           "trait_ordering"]
