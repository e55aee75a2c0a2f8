"""The location prior: places, EXIF GPS, geofences, GBIF presence tables, checklists, and the CLI."""
import json
import zipfile

import numpy as np
import pytest
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from taxoclip.cli import main
from taxoclip.errors import InputError
from taxoclip.geo import (Place, RangePrior, build_presence, exif_location, locate, locate_many, parse_admin1,
                          parse_country)

P, A, U = RangePrior.PRESENT, RangePrior.ABSENT, RangePrior.UNKNOWN
LEP = ("Animalia", "Arthropoda", "Insecta", "Lepidoptera")
MONARCH = LEP + ("Nymphalidae", "Danaus", "plexippus")
DANAUS = LEP + ("Nymphalidae", "Danaus")  # a genus: six names
RED_ADMIRAL = LEP + ("Nymphalidae", "Vanessa", "atalanta")
SWALLOWTAIL = LEP + ("Papilionidae", "Papilio", "machaon")
RAVEN = ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corax")


# ----- places ------------------------------------------------------------------------------------
@pytest.mark.parametrize("lat, lon, country", [
    (48.8566, 2.3522, "FRA"),  # Paris
    (-1.2921, 36.8219, "KEN"),  # Nairobi
    (40.7128, -74.0060, "USA"),  # New York
    (-33.8688, 151.2093, "AUS"),  # Sydney
    (69.6492, 18.9553, "NOR"),  # Tromsø, on an island just off the 1:10m coastline
    (30.0, -40.0, None),  # mid-Atlantic: at sea, not the nearest country
])
def test_locate_known_points(lat, lon, country):
    place = locate(lat, lon)
    assert place.country == country and place.admin1 is None
    assert (place.latitude, place.longitude) == (lat, lon)


def test_locate_many_matches_locate_and_rejects_bad_coordinates():
    lats, lons = [48.8566, 30.0, -1.2921], [2.3522, -40.0, 36.8219]
    assert [p.country for p in locate_many(lats, lons)] == ["FRA", None, "KEN"]
    assert locate_many([], []) == []
    with pytest.raises(InputError, match="latitude 123"):
        locate(123, 0)
    with pytest.raises(InputError, match="longitude -181"):
        locate(0, -181)
    with pytest.raises(InputError, match="latitude nan"):
        locate_many([float("nan")], [0.0])


@pytest.mark.parametrize("value", ["FR", "fra", "FRA", "France", " france ", "French Republic"])
def test_parse_country_spellings(value):
    assert parse_country(value) == "FRA"


def test_parse_country_common_names_and_unknown_codes():
    assert parse_country("Ivory Coast") == "CIV" and parse_country("Russia") == "RUS"
    assert parse_country("XK") == parse_country("Kosovo") == "XKX"  # GBIF's code for Kosovo
    with pytest.raises(InputError, match="^unknown country 'XX'$"):
        parse_country("XX")
    with pytest.raises(InputError):
        parse_country("Fr4nce")  # no fuzzy guesses


def test_parse_admin1():
    assert parse_admin1("CA", "USA") == parse_admin1("us-ca", None) == parse_admin1("US-CA", "US") == "US-CA"
    with pytest.raises(InputError, match="unknown admin1"):
        parse_admin1("ZZ", "USA")
    with pytest.raises(InputError, match="not in FRA"):
        parse_admin1("US-CA", "FRA")
    with pytest.raises(InputError):
        parse_admin1("CA", None)  # a short code needs its country


# ----- EXIF --------------------------------------------------------------------------------------
def test_exif_gps_round_trip(tmp_path):
    exif = Image.Exif()
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "S"
    gps[ExifTags.GPS.GPSLatitude] = (IFDRational(1), IFDRational(17), IFDRational(3156, 100))  # 1° 17' 31.56"
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (IFDRational(36), IFDRational(49), IFDRational(1884, 100))
    path = tmp_path / "gps.jpg"
    Image.new("RGB", (16, 16), "green").save(path, exif=exif)
    lat, lon = exif_location(path)
    assert lat == pytest.approx(-(1 + 17 / 60 + 31.56 / 3600)) and lon == pytest.approx(36 + 49 / 60 + 18.84 / 3600)
    with Image.open(path) as im:
        assert exif_location(im) == (lat, lon)
    assert locate(lat, lon).country == "KEN"


def test_exif_absent_or_unreadable(tmp_path):
    plain = tmp_path / "plain.jpg"
    Image.new("RGB", (16, 16)).save(plain)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    assert exif_location(plain) is None
    assert exif_location(broken) is None
    assert exif_location(tmp_path / "missing.jpg") is None


# ----- geofence ----------------------------------------------------------------------------------
GEOFENCE = {
    "mammalia;artiodactyla;cervidae;capreolus;capreolus": {"allow": {"FRA": [], "DEU": []}},
    "mammalia;artiodactyla;cervidae;capreolus;": {"block": {"USA": []}},
    "mammalia;carnivora;ursidae;ursus;americanus": {"allow": {"USA": ["NJ", "CA"], "CAN": []}},
    "mammalia;carnivora;canidae;canis;lupus": {"allow": {"USA": [], "CAN": []}},
    "mammalia;carnivora;canidae;canis;lupus dingo": {"block": {"USA": []}},
    "mammalia;proboscidea;elephantidae;loxodonta;africana": {"allow": {"KEN": []}},  # never asked about
}
MAMMALIA = ("Animalia", "Chordata", "Mammalia")
ROE_DEER = MAMMALIA + ("Artiodactyla", "Cervidae", "Capreolus", "capreolus")
CAPREOLUS = MAMMALIA + ("Artiodactyla", "Cervidae", "Capreolus")
CERVIDAE = MAMMALIA + ("Artiodactyla", "Cervidae")
BLACK_BEAR = MAMMALIA + ("Carnivora", "Ursidae", "Ursus", "americanus")
WOLF = MAMMALIA + ("Carnivora", "Canidae", "Canis", "lupus")
RED_FOX = MAMMALIA + ("Carnivora", "Canidae", "Vulpes", "vulpes")


@pytest.fixture
def geofence(tmp_path):
    path = tmp_path / "geofence_release.json"
    path.write_text(json.dumps(GEOFENCE))
    return RangePrior.from_geofence(path)


@pytest.mark.parametrize("place, expected", [
    #                       roe deer, Capreolus, Cervidae, black bear, wolf, red fox
    (Place("FRA"), [P, P, P, A, A, U]),  # allowed in France; bear and wolf outside their allow lists
    (Place("ESP"), [A, A, A, A, A, U]),  # the only deer data: not allowed in Spain
    (Place("USA"), [A, A, A, P, P, U]),  # the genus is blocked in the USA; the dingo's block is not the wolf's
    (Place("USA", "US-NJ"), [A, A, A, P, P, U]),
    (Place("USA", "US-TX"), [A, A, A, A, P, U]),  # bears allowed only in NJ and CA
    (Place("CAN", latitude=45.4, longitude=-75.7), [A, A, A, P, P, U]),
    (Place(), [U, U, U, U, U, U]),  # no country: a geofence says nothing
])
def test_geofence_allow_and_block(geofence, place, expected):
    lineages = [ROE_DEER, CAPREOLUS, CERVIDAE, BLACK_BEAR, WOLF, RED_FOX]
    got = geofence.status(lineages, place)
    assert got.dtype == np.int8 and got.tolist() == expected


def test_geofence_matches_names_not_whole_lineages(geofence):
    # a vocabulary with another kingdom spelling and no phylum still finds the roe deer
    assert geofence.status([("Metazoa", "", "Mammalia", "", "", "Capreolus", "capreolus")], Place("DEU")).tolist() == [P]
    assert geofence.status([("", "", "", "", "", "", "capreolus")], Place("DEU")).tolist() == [U]  # no genus


def test_geofence_rejects_malformed_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"mammalia;carnivora": {"allow": {"FRA": []}}}))
    with pytest.raises(InputError, match="5 fields"):
        RangePrior.from_geofence(bad)
    bad.write_text(json.dumps({"mammalia;carnivora;;;": {"allow": {"FR": []}}}))
    with pytest.raises(InputError, match="alpha-3"):
        RangePrior.from_geofence(bad)


# ----- GBIF presence -----------------------------------------------------------------------------
GBIF_HEADER = ["gbifID", "kingdom", "phylum", "class", "order", "family", "genus", "species", "taxonRank",
               "scientificName", "countryCode", "stateProvince", "decimalLatitude", "decimalLongitude"]
NYMPH, PAPIL = ["Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae"], \
    ["Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Papilionidae"]
GBIF_ROWS = [
    NYMPH + ["Danaus", "Danaus plexippus", "SPECIES", "Danaus plexippus (Linnaeus, 1758)", "US", "California", "36.6", "-121.9"],
    NYMPH + ["Danaus", "Danaus plexippus", "SPECIES", "Danaus plexippus", "MX", "Michoacán", "19.6", "-100.2"],
    NYMPH + ["Vanessa", "Vanessa atalanta", "SPECIES", "Vanessa atalanta", "FR", "", "48.85", "2.35"],
    NYMPH + ["Vanessa", "Vanessa atalanta", "SUBSPECIES", "Vanessa atalanta rubria", "US", "", "36.5", "-121.8"],
    PAPIL + ["Papilio", "Papilio machaon", "SPECIES", "Papilio machaon", "FR", "", "", ""],  # no coordinates
    NYMPH + ["Vanessa", "Vanessa atalanta", "SPECIES", "Vanessa atalanta", "", "", "-1.29", "36.82"],  # no country code
    NYMPH + ["Danaus", "", "GENUS", "Danaus", "US", "", "36", "-120"],  # no species
    NYMPH + ["Vanessa", "Vanessa atalanta", "SPECIES", "Vanessa atalanta", "DE", "", "123", "2"],  # bad latitude
    NYMPH + ["Vanessa", "Vanessa cardui", "SPECIES", "Vanessa cardui", "", "", "", ""],  # no place at all
]


def write_gbif_csv(path, rows=GBIF_ROWS):
    lines = ["\t".join(GBIF_HEADER)] + ["\t".join([str(i)] + r) for i, r in enumerate(rows, start=1)]
    lines.append("999\ttoo\tfew\tcolumns")  # a truncated line
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def presence(tmp_path):
    out = tmp_path / "presence.parquet"
    stats = build_presence(write_gbif_csv(tmp_path / "0001-occurrence.csv"), out)
    return out, stats


def test_build_presence_counts(presence):
    out, stats = presence
    assert stats["rows"] == 9 and stats["used"] == 6
    assert stats["skipped"] == {"malformed": 1, "no_species": 1, "bad_coordinates": 1, "no_location": 1}
    assert stats["taxa"] == 3 and stats["countries"] == 4  # USA MEX FRA, KEN located from coordinates
    assert stats["without_coordinates"] == 1 and stats["cells"] == 4  # the two Monterey points share a cell
    import pyarrow.parquet as pq

    table = pq.read_table(out).to_pandas()
    assert set(table.columns) == {"kingdom", "phylum", "class", "order", "family", "genus", "species_epithet",
                                  "country", "h3_cell", "occurrences"}
    by_country = table[table.country.notna()]
    assert sorted(zip(by_country.genus, by_country.species_epithet, by_country.country)) == [
        ("Danaus", "plexippus", "MEX"), ("Danaus", "plexippus", "USA"), ("Papilio", "machaon", "FRA"),
        ("Vanessa", "atalanta", "FRA"), ("Vanessa", "atalanta", "KEN"), ("Vanessa", "atalanta", "USA")]
    assert table.occurrences.sum() == 6 + 5  # each located record once per country, once per cell


@pytest.mark.parametrize("place, expected", [
    #                       monarch, Danaus, red admiral, swallowtail, raven, Lepidoptera
    (Place("USA"), [P, P, P, A, U, P]),
    (Place("FRA"), [A, A, P, P, U, P]),
    (Place("KEN"), [A, A, P, A, U, P]),
    (Place("DEU"), [U, U, U, U, U, U]),  # the download has no record in Germany: no data, not absence
    (Place("FRA", latitude=36.6, longitude=-121.9), [P, P, P, P, U, P]),  # the H3 cell has monarchs
    (Place("MEX", latitude=19.7, longitude=-100.1), [P, P, A, A, U, P]),  # a neighbouring cell's record
    (Place(latitude=30.0, longitude=-40.0), [U, U, U, U, U, U]),  # at sea
])
def test_presence_status_per_country_and_cell(presence, place, expected):
    prior = RangePrior.from_presence(presence[0])
    assert prior.status([MONARCH, DANAUS, RED_ADMIRAL, SWALLOWTAIL, RAVEN, LEP], place).tolist() == expected


def test_presence_from_zipped_csv_and_dwca(tmp_path, presence):
    zipped = tmp_path / "0001.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        z.write(write_gbif_csv(tmp_path / "inner.csv"), "0001.csv")
    assert build_presence(zipped, tmp_path / "z.parquet") == presence[1]

    fields = "".join(f'<field index="{i}" term="http://rs.tdwg.org/dwc/terms/{t}"/>'
                     for i, t in enumerate(GBIF_HEADER) if i)
    meta = ('<archive xmlns="http://rs.tdwg.org/dwc/text/"><core encoding="UTF-8" fieldsTerminatedBy="\\t" '
            'linesTerminatedBy="\\n" fieldsEnclosedBy="" ignoreHeaderLines="1" '
            f'rowType="http://rs.tdwg.org/dwc/terms/Occurrence"><files><location>occurrence.txt</location>'
            f'</files><id index="0"/>{fields}</core></archive>')
    dwca = tmp_path / "dwca.zip"
    with zipfile.ZipFile(dwca, "w") as z:
        z.writestr("meta.xml", meta)
        z.write(write_gbif_csv(tmp_path / "occ.txt"), "occurrence.txt")
    assert build_presence(dwca, tmp_path / "d.parquet") == presence[1]

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w") as z:
        z.writestr("meta.xml", '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xx"><!ENTITY y "&x;&x;">]><a>&y;</a>')
        z.writestr("occurrence.txt", "id\tspecies\n")
    with pytest.raises(InputError, match="meta.xml: refused"):
        build_presence(bomb, tmp_path / "b.parquet")


def test_build_presence_rejects_the_wrong_file(tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("a\tb\n1\t2\n")
    with pytest.raises(InputError, match="no species"):
        build_presence(other, tmp_path / "o.parquet")
    assert not (tmp_path / "o.parquet").exists()


# ----- checklists and combining sources -----------------------------------------------------------------
def test_site_checklist(tmp_path):
    path = tmp_path / "sites.csv"
    path.write_text("site,scientificName\nPlot A,Danaus plexippus\nPlot A,Vanessa\n"
                    "Plot B,\"Papilio machaon (Linnaeus, 1758)\"\n")
    prior = RangePrior.from_checklist(path)
    asked = [MONARCH, RED_ADMIRAL, LEP + ("Nymphalidae", "Vanessa"), SWALLOWTAIL]
    assert prior.status(asked, Place(site="plot a")).tolist() == [P, U, P, A]  # Vanessa is listed as a genus only
    assert prior.status(asked, Place(site="Plot B")).tolist() == [A, U, A, P]
    assert prior.status(asked, Place(site="Plot C")).tolist() == [U, U, U, U]  # a site the list does not cover


def test_country_checklist_with_admin1_and_rank_columns(tmp_path):
    path = tmp_path / "countries.csv"
    path.write_text("country,admin1,genus,species_epithet\nUSA,CA,Danaus,plexippus\nFrance,,Papilio,machaon\n")
    prior = RangePrior.from_checklist(path)
    assert prior.status([MONARCH, SWALLOWTAIL], Place("USA", "US-CA")).tolist() == [P, A]  # California's list
    assert prior.status([MONARCH, SWALLOWTAIL], Place(admin1="US-CA")).tolist() == [P, A]  # admin1 implies USA
    assert prior.status([MONARCH, SWALLOWTAIL], Place("FRA")).tolist() == [A, P]
    # Listed in California, so present in the USA; the list covers no other US region: no absences there
    assert prior.status([MONARCH, SWALLOWTAIL], Place("USA", "US-NY")).tolist() == [P, U]


def test_sources_combine(tmp_path, presence):
    fence = tmp_path / "fence.json"
    fence.write_text(json.dumps({
        "insecta;lepidoptera;nymphalidae;danaus;plexippus": {"block": {"MEX": []}},  # beats the GBIF record
        "insecta;lepidoptera;papilionidae;papilio;machaon": {"allow": {"DEU": []}},  # loses to the GBIF record
    }))
    checklist = tmp_path / "list.csv"
    checklist.write_text("country,scientificName\nDEU,Corvus corax\n")
    prior = RangePrior.load([presence[0], fence, checklist])
    asked = [MONARCH, SWALLOWTAIL, RAVEN, RED_ADMIRAL]
    assert prior.status(asked, Place("MEX")).tolist() == [A, A, U, A]
    assert prior.status(asked, Place("FRA")).tolist() == [A, P, U, P]
    assert prior.status(asked, Place("DEU")).tolist() == [U, P, P, U]
    assert prior.status([], Place("DEU")).tolist() == []
    kinds = [(d["kind"], d["path"]) for d in prior.describe()]
    assert kinds == [("presence", "presence.parquet"), ("geofence", "fence.json"), ("checklist", "list.csv")]
    assert all(len(d["sha256"]) == 64 for d in prior.describe())
    assert RangePrior.load([]).status([MONARCH], Place("USA")).tolist() == [U]


def test_load_refuses_a_raw_gbif_download(tmp_path):
    with pytest.raises(InputError, match="taxoclip geo build"):
        RangePrior.load([write_gbif_csv(tmp_path / "raw.csv")])


# ----- CLI ---------------------------------------------------------------------------------------
def test_cli_build_and_locate(tmp_path, capsys):
    out = tmp_path / "p.parquet"
    assert main(["geo", "build", str(write_gbif_csv(tmp_path / "d.csv")), "-o", str(out), "--h3-resolution", "3"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["h3_resolution"] == 3 and stats["taxa"] == 3
    assert RangePrior.from_presence(out).describe()[0]["h3_resolution"] == 3

    assert main(["geo", "locate", "-1.2921", "36.8219"]) == 0
    assert capsys.readouterr().out.splitlines() == ["country: KEN", "admin1: unknown"]
    assert main(["geo", "locate", "123", "0"]) == 2
    assert "latitude 123" in capsys.readouterr().err
