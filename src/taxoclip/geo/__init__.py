"""Location priors: where a photo was taken, and which taxa range data place there.

    >>> from taxoclip.geo import RangePrior, locate
    >>> prior = RangePrior.load(["presence.parquet", "geofence_release.json"])
    >>> prior.status([("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Danaus", "plexippus")],
    ...              locate(48.86, 2.35))                      # array([1]) PRESENT, 0 ABSENT, -1 UNKNOWN

`places` normalises countries and subdivisions and reverse-geocodes offline; `exif` reads
GPS from photos; `presence` turns GBIF downloads into presence tables; `sources` reads the
kinds of range data; `prior` combines them. See docs/geo.md.
"""
from __future__ import annotations

from .exif import exif_location
from .places import Place, locate, locate_many, parse_admin1, parse_country
from .presence import build_presence
from .prior import RangePrior

__all__ = ["Place", "locate", "locate_many", "parse_country", "parse_admin1", "exif_location",
           "RangePrior", "build_presence"]
