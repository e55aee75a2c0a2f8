"""`taxoclip geo`: build presence tables from GBIF downloads, and reverse-geocode points offline."""
from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    p = sub.add_parser("geo", help="location priors: presence tables from GBIF downloads, offline geocoding",
                       description="Range data for the location prior (see docs/geo.md).")
    geo = p.add_subparsers(title="geo commands", dest="geo_command", metavar="COMMAND", required=True)

    b = geo.add_parser("build", help="a GBIF download -> a presence table (taxa per country and H3 cell)",
                       description="Stream a GBIF occurrence download (simple CSV, zipped or not, or a Darwin "
                                   "Core Archive) into a Parquet presence table for `RangePrior`.")
    b.add_argument("download", help="the GBIF download: .zip, .csv (optionally .gz) or a DwC-A folder")
    b.add_argument("-o", "--output", required=True, help="the presence table to write (.parquet)")
    b.add_argument("--h3-resolution", type=int, default=4, metavar="N",
                   help="H3 resolution of the cell rows (default 4: cells of ~1,770 km²)")
    b.set_defaults(func=run_build)

    loc = geo.add_parser("locate", help="the country at a latitude/longitude (offline)",
                         description="Print the country (ISO 3166-1 alpha-3) and admin1 region at a point.")
    loc.add_argument("latitude", type=float)
    loc.add_argument("longitude", type=float)
    loc.set_defaults(func=run_locate)


def run_build(args: argparse.Namespace) -> int:
    from ..geo import build_presence

    stats = build_presence(args.download, args.output, h3_resolution=args.h3_resolution)
    skipped = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in stats["skipped"].items() if v) or "none"
    print(f"{args.output}: {stats['taxa']} taxa, {stats['countries']} countries, {stats['cells']} cells "
          f"from {stats['rows']} rows (skipped: {skipped})", file=sys.stderr)
    print(json.dumps(stats))
    return 0


def run_locate(args: argparse.Namespace) -> int:
    from ..geo import locate

    place = locate(args.latitude, args.longitude)
    print(f"country: {place.country or 'none (at sea, or outside every country)'}")
    print(f"admin1: {place.admin1 or 'unknown'}")
    return 0
