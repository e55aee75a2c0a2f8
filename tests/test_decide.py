"""Decisions: the deepest confident rank, thresholds, the location prior, events, calibration,
and `taxoclip decide` giving exactly what `taxoclip predict` gave."""
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from taxoclip.cli import main
from taxoclip.decide import Policy, Thresholds, decide_table
from taxoclip.decide.scores import score_schema
from taxoclip.errors import InputError

CARDUI = "Animalia;Arthropoda;Insecta;Lepidoptera;Nymphalidae;Vanessa;cardui"
ATALANTA = "Animalia;Arthropoda;Insecta;Lepidoptera;Nymphalidae;Vanessa;atalanta"
IO = "Animalia;Arthropoda;Insecta;Lepidoptera;Nymphalidae;Aglais;io"
FINCH = "Animalia;Chordata;Aves;Passeriformes;Fringillidae;;sp"  # a species whose genus is empty


def prefix(key: str, depth: int) -> str:
    return ";".join(key.split(";")[:depth])


def row(name: str, species: dict[str, float], groups: dict[str, dict[str, float]] | None = None, **context) -> dict:
    """One photo's stored scores; higher ranks default to the sums of the given species (a photo
    whose stored species hold all its mass)."""
    out = {"file_name": name, "error": None, "species": list(species), "species_p": list(species.values()),
           "common_name": [""] * len(species)}
    for depth, level in zip(range(6, 0, -1), ["genus", "family", "order", "class", "phylum", "kingdom"]):
        sums: dict[str, float] = {}
        for k, p in species.items():
            sums[prefix(k, depth)] = sums.get(prefix(k, depth), 0.0) + p
        given = (groups or {}).get(level, sums)
        ordered = sorted(given.items(), key=lambda kv: (-kv[1], kv[0]))
        out[level], out[f"{level}_p"] = [k for k, _ in ordered], [p for _, p in ordered]
    return {**out, **context}


def table(*rows: dict) -> pa.Table:
    cols = {c: [r.get(c) for r in rows] for c in score_schema().names}
    return pa.Table.from_pydict(cols, schema=score_schema())


def decide(*rows, threshold="0.8", **policy):
    return decide_table(table(*rows), Policy(Thresholds.parse(threshold), **policy)).to_dict("records")


def test_species_that_passes_is_the_answer():
    [d] = decide(row("a.jpg", {CARDUI: 0.85, ATALANTA: 0.1, IO: 0.05}))
    assert (d["prediction"], d["prediction_rank"], d["prediction_source"]) == ("Vanessa cardui", "species", "model")
    assert d["prediction_score"] == pytest.approx(0.85)


def test_genus_mass_counts_species_beyond_the_stored_ones():
    # two stored Vanessa species hold 0.75; the genus holds 0.83 over the whole vocabulary
    genus = {"genus": {prefix(CARDUI, 6): 0.83, prefix(IO, 6): 0.1}}
    [d] = decide(row("a.jpg", {CARDUI: 0.45, ATALANTA: 0.3, IO: 0.1}, genus))
    assert (d["prediction"], d["prediction_rank"], d["prediction_source"]) == ("Vanessa", "genus", "rollup")
    assert d["prediction_score"] == pytest.approx(0.83)


def test_abstains_up_to_kingdom_and_to_nothing():
    fifty_fifty = {CARDUI: 0.3, "Animalia;Chordata;Aves;Passeriformes;Fringillidae;Fringilla;coelebs": 0.3,
                   "Plantae;Tracheophyta;Magnoliopsida;Rosales;Rosaceae;Rosa;canina": 0.4}
    [d] = decide(row("a.jpg", fifty_fifty), threshold="0.6")
    assert (d["prediction"], d["prediction_rank"], d["prediction_score"]) == ("Animalia", "kingdom", pytest.approx(0.6))
    [d] = decide(row("a.jpg", fifty_fifty), threshold="0.65")
    assert (d["prediction"], d["prediction_rank"], d["prediction_source"]) == ("", "", "none")
    assert np.isnan(d["prediction_score"])


def test_ties_go_to_the_lineage_that_sorts_first():
    [d] = decide(row("a.jpg", {IO: 0.5, ATALANTA: 0.5}), threshold="0.5")
    assert d["prediction"] == "Aglais io"  # "…;Aglais;io" sorts before "…;Vanessa;atalanta"
    [d] = decide(row("a.jpg", {ATALANTA: 0.5, IO: 0.5}), threshold="0.5")
    assert d["prediction"] == "Aglais io"


def test_a_species_without_genus_answers_at_family():
    [d] = decide(row("a.jpg", {FINCH: 0.9, CARDUI: 0.1}), threshold="0.8")
    assert (d["prediction"], d["prediction_rank"]) == ("Fringillidae", "family")
    assert d["prediction_score"] == pytest.approx(0.9)


def test_per_rank_and_per_taxon_thresholds(tmp_path):
    r = row("a.jpg", {CARDUI: 0.85, ATALANTA: 0.1, IO: 0.05})
    [d] = decide(r, threshold="species=0.9,genus=0.9")
    assert (d["prediction"], d["prediction_rank"]) == ("Vanessa", "genus")
    csv = tmp_path / "t.csv"
    csv.write_text("rank,taxon,threshold\nspecies,Vanessa cardui,0.99\ngenus,Vanessa,0.99\n")
    [d] = decide_table(table(r), Policy(Thresholds.parse("0.8", csv))).to_dict("records")
    assert (d["prediction"], d["prediction_rank"]) == ("Nymphalidae", "family")


@pytest.mark.parametrize("text, message", [("subspecies=0.5", "unknown rank 'subspecies'"), ("1.5", "between 0 and 1"),
                                           ("species=high", "'high'")])
def test_bad_thresholds_are_one_line(text, message):
    with pytest.raises(InputError, match=message):
        Thresholds.parse(text)


def test_taxon_threshold_file_needs_its_columns(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("name,value\nVanessa,0.5\n")
    with pytest.raises(InputError, match="needs columns rank, taxon, threshold"):
        Thresholds.parse(None, csv)


# ----- location prior -------------------------------------------------------------------------
@pytest.fixture
def checklist(tmp_path):
    """Vanessa atalanta recorded in France, Vanessa cardui only in Spain."""
    path = tmp_path / "checklist.csv"
    path.write_text("country,scientificName\nFRA,Vanessa atalanta\nESP,Vanessa cardui\n")
    from taxoclip.geo import RangePrior

    return RangePrior.load([path])


def photo_in(country, **kw):
    # cardui 0.5, atalanta 0.3, 0.2 of the mass outside the stored species (0.05 of it in Vanessa)
    genus = {"genus": {prefix(CARDUI, 6): 0.85}}
    return row("a.jpg", {CARDUI: 0.5, ATALANTA: 0.3}, genus, country=country, **kw)


def test_mask_prior_removes_absent_species_and_says_so(checklist):
    [before] = decide(photo_in("FRA"), threshold="0.55")
    assert (before["prediction"], before["prediction_rank"]) == ("Vanessa", "genus")
    [d] = decide(photo_in("FRA"), threshold="0.55", prior=checklist)
    # cardui absent: Z = 0.3 + 0.2 -> atalanta 0.3 / 0.5
    assert (d["prediction"], d["prediction_rank"], d["prediction_source"]) == ("Vanessa atalanta", "species",
                                                                              "location prior")
    assert d["prediction_score"] == pytest.approx(0.6)


def test_soft_prior_downweights(checklist):
    [d] = decide(photo_in("FRA"), threshold="species=0.5,genus=0.99,family=0.99,order=0.99,class=0.99,"
                                            "phylum=0.99,kingdom=0.99", prior=checklist, prior_mode="soft",
                 prior_weight=0.1)
    # Z = 0.05 + 0.3 + 0.2 = 0.55: atalanta 0.545
    assert (d["prediction"], d["prediction_score"]) == ("Vanessa atalanta", pytest.approx(0.3 / 0.55))


def test_group_rest_keeps_the_weight_of_its_group(checklist):
    [d] = decide(photo_in("FRA"), threshold="species=0.99,genus=0.6", prior=checklist)
    # genus: atalanta 0.3 + the 0.05 of Vanessa beyond the stored species (Vanessa occurs in France), / 0.5
    assert (d["prediction"], d["prediction_rank"]) == ("Vanessa", "genus")
    assert d["prediction_score"] == pytest.approx(0.7)


def test_taxa_without_range_data_are_never_removed(checklist):
    [d] = decide(row("a.jpg", {IO: 0.9, CARDUI: 0.1}, country="FRA"), threshold="0.85", prior=checklist)
    assert (d["prediction"], d["prediction_source"]) == ("Aglais io", "model")


def test_bad_locations_are_noted_per_photo_and_the_run_goes_on(checklist):
    rows = [photo_in("ZZ"), photo_in(None, latitude=123.0, longitude=5.0), photo_in(None), photo_in("FRA")]
    for i, r in enumerate(rows):
        r["file_name"] = f"{i}.jpg"
    out = decide(*rows, threshold="0.55", prior=checklist)
    assert "unknown country 'ZZ'" in out[0]["note"]
    assert "123" in out[1]["note"] and "latitude" in out[1]["note"]
    assert "no location" in out[2]["note"]
    assert [d["prediction_source"] for d in out[:3]] != ["location prior"] * 3
    assert out[3]["prediction"] == "Vanessa atalanta" and out[3]["note"] == ""


def test_geofence_for_taxa_outside_the_vocabulary_changes_nothing(tmp_path):
    from taxoclip.geo import RangePrior

    fence = tmp_path / "fence.json"
    fence.write_text(json.dumps({"mammalia;carnivora;felidae;panthera;leo": {"allow": {"KEN": []}}}))
    [d] = decide(photo_in("FRA"), threshold="0.45", prior=RangePrior.load([fence]))
    assert (d["prediction"], d["prediction_source"]) == ("Vanessa cardui", "model")


# ----- events ---------------------------------------------------------------------------------
def test_burst_is_decided_once_from_the_mean_of_its_photos():
    from taxoclip.decide import decide_tables

    rows = [row("cam1/1.jpg", {CARDUI: 0.9, IO: 0.1}, deployment="cam1", datetime="2024-05-01T10:00:00"),
            row("cam1/2.jpg", {CARDUI: 0.5, ATALANTA: 0.4, IO: 0.1}, deployment="cam1",
                datetime="2024-05-01T10:00:30"),
            row("cam1/3.jpg", {IO: 0.9, CARDUI: 0.1}, deployment="cam1", datetime="2024-05-01T10:05:00"),
            row("cam1/4.jpg", {IO: 0.9, CARDUI: 0.1}, deployment="cam1", datetime=None)]
    [(_, out)] = list(decide_tables([table(*rows)], Policy(Thresholds.parse("species=0.6,genus=0.99,family=0.99,"
                                                                            "order=0.99,class=0.99,phylum=0.99,"
                                                                            "kingdom=0.99")), events=True))
    d = out.set_index("file_name")
    assert d.loc["cam1/1.jpg", "event"] == d.loc["cam1/2.jpg", "event"] != d.loc["cam1/3.jpg", "event"]
    assert d.loc["cam1/4.jpg", "event"] not in set(d.loc[["cam1/1.jpg", "cam1/3.jpg"], "event"])  # no time: alone
    # event of 1 and 2: cardui (0.9 + 0.5) / 2 = 0.7 passes 0.6; photo 2 alone (0.5) would not
    assert d.loc["cam1/2.jpg", "prediction"] == "Vanessa cardui"
    assert d.loc["cam1/2.jpg", "prediction_score"] == pytest.approx(0.7)
    assert d.loc["cam1/2.jpg", "prediction_source"] == "event"
    assert d.loc["cam1/1.jpg", "prediction_source"] == "model"
    events = out.attrs["events"].set_index("event")
    assert events.loc[d.loc["cam1/1.jpg", "event"], "photos"] == 2


# ----- calibration ----------------------------------------------------------------------------
def test_reliability_and_ece_by_hand():
    from taxoclip.decide.calibration import expected_calibration_error, reliability

    conf = np.array([0.95, 0.95, 0.15, 0.15])
    right = np.array([True, False, False, False])
    table_ = reliability(conf, right)
    assert table_[9]["photos"] == 2 and table_[9]["accuracy"] == 0.5
    # half the photos are 0.45 over-confident, half 0.15
    assert expected_calibration_error(conf, right) == pytest.approx(0.5 * 0.45 + 0.5 * 0.15)


def test_fitted_temperature_recovers_the_one_that_made_the_labels():
    import torch

    from taxoclip.decide.calibration import fit_temperature, temperature_curve
    from taxoclip.textbank import TextBank

    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(50, 16, generator=g), dim=1)
    bank = TextBank.from_arrays(emb, [f"c{i}" for i in range(50)])
    feats = torch.nn.functional.normalize(torch.randn(4000, 16, generator=g), dim=1)
    scale, true_t = 10.0, 0.5
    probs = torch.softmax(feats @ emb.T * scale / true_t, 1)
    targets = torch.multinomial(probs, 1, generator=g)[:, 0].numpy()
    nll, _ = temperature_curve(bank, feats, targets, scale)
    direct = -torch.log_softmax(feats @ emb.T * scale / 0.05, 1)[torch.arange(4000), torch.as_tensor(targets)].mean()
    assert nll[0] == pytest.approx(float(direct), rel=1e-4)  # the curve is the exact NLL
    assert fit_temperature(nll) == pytest.approx(true_t, rel=0.1)


# ----- files and the command line -------------------------------------------------------------
def test_predict_then_decide_gives_the_same_decisions(offline_hub, photos, tmp_path, capsys):
    """A fresh predict with decision options and a decide from its stored scores agree exactly,
    also with a location prior and events."""
    from helpers import random_taxa

    taxa = random_taxa(300)
    species = [f"{ranks[5]} {ranks[6]}" for ranks, _ in taxa if ranks[6]][:40]
    checklist = tmp_path / "checklist.csv"
    checklist.write_text("country,scientificName\n" + "".join(f"{'FRA' if i % 2 else 'KEN'},{s}\n"
                                                              for i, s in enumerate(species)))
    context = tmp_path / "context.csv"
    context.write_text("file_name,country,deployment,datetime\n" + "".join(
        f"{p},{'FRA' if i % 3 else 'KEN'},cam{i % 2},2024-05-01T10:00:{10 * i:02d}\n" for i, p in enumerate(photos)))
    options = ["--threshold", "species=0.005,genus=0.02,family=0.05,order=0.1,class=0.2,phylum=0.4,kingdom=0.6",
               "--prior", checklist, "--context", context, "--events", "--calibration", "none"]
    scores, first = tmp_path / "s.parquet", tmp_path / "p.csv"
    code = main([str(a) for a in ["predict", *photos, "--model", "bioclip-2", "--scores", scores, "-o", first,
                                  *options]])
    assert code == 0, capsys.readouterr().err
    again = tmp_path / "d.csv"
    assert main([str(a) for a in ["decide", scores, "-o", again, *options[:-2]]]) == 0
    p = pd.read_csv(first, keep_default_na=False).groupby("file_name").first()
    d = pd.read_csv(again, keep_default_na=False).set_index("file_name")
    cols = ["event", "prediction", "prediction_rank", "prediction_score", "prediction_source", "note"]
    assert len(d) == len(photos)
    pd.testing.assert_frame_equal(p.loc[d.index, cols], d[cols])
    assert set(d["prediction_rank"]) - {""}, "the thresholds should give some answers"
    record = json.loads((tmp_path / "d.csv.provenance.json").read_text())
    assert record["decision"]["prior"]["sources"][0]["sha256"]
    assert record["scores"][0]["scored_by"]["model"]["id"] == "bioclip-2"
    assert record["scores"][0]["scored_by"]["vocabulary"]["hash"]


def test_scores_from_two_vocabularies_are_refused(tmp_path):
    import pyarrow.parquet as pq

    paths = []
    for i, h in enumerate(["aaaa", "bbbb"]):
        t = table(row("a.jpg", {CARDUI: 1.0})).replace_schema_metadata(
            {b"taxoclip": json.dumps({"vocabulary": {"name": f"v{i}", "hash": h}}).encode()})
        pq.write_table(t, tmp_path / f"{i}.parquet")
        paths.append(tmp_path / f"{i}.parquet")
    from taxoclip.decide import decide as decide_files

    with pytest.raises(InputError, match="decide them separately"):
        decide_files(paths)
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(InputError, match="not a taxoclip scores file"):
        decide_files([tmp_path / "other.parquet"])


def test_prior_from_a_gbif_download_restricts_butterflies_to_their_countries(tmp_path):
    """A synthetic GBIF simple-CSV download, through `taxoclip geo build`, then a decision."""
    header = ["gbifID", "kingdom", "phylum", "class", "order", "family", "genus", "species", "taxonRank",
              "countryCode", "decimalLatitude", "decimalLongitude"]
    lepi = ["Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae"]
    records = [lepi + ["Vanessa", "Vanessa cardui", "SPECIES", "ES", "40.4", "-3.7"],
               lepi + ["Vanessa", "Vanessa atalanta", "SPECIES", "FR", "48.85", "2.35"],
               lepi + ["Aglais", "Aglais io", "SPECIES", "FR", "45.76", "4.83"]]
    download = tmp_path / "0001-gbif.csv"
    download.write_text("\n".join("\t".join([str(i)] + r) for i, r in enumerate([header[1:]] + records))
                        .replace("0\tkingdom", "gbifID\tkingdom", 1) + "\n")
    presence = tmp_path / "presence.parquet"
    assert main(["geo", "build", str(download), "-o", str(presence)]) == 0
    from taxoclip.geo import RangePrior

    prior = RangePrior.load([presence])
    photos = [photo_in("FRA"), {**photo_in(None), "latitude": 48.85, "longitude": 2.35}, photo_in("ESP")]
    for i, r in enumerate(photos):
        r["file_name"] = f"{i}.jpg"
    before = decide(*photos, threshold="0.45")
    after = decide(*photos, threshold="0.45", prior=prior)
    assert [d["prediction"] for d in before] == ["Vanessa cardui"] * 3
    assert [d["prediction"] for d in after] == ["Vanessa atalanta", "Vanessa atalanta", "Vanessa cardui"]
    assert [d["prediction_source"] for d in after] == ["location prior", "location prior", "model"]


def test_custom_labels_are_decided_by_the_species_threshold(tmp_path):
    """Labels have no ranks: the best label answers when it reaches the species threshold (or its
    own threshold), photos of one event are decided together, a location prior is refused."""
    from taxoclip.decide import decide_tables
    from taxoclip.decide.rule import decide_labels
    from taxoclip.decide.scores import label_batch

    t = label_batch(["cam/1.jpg", "cam/2.jpg", "cam/3.jpg", "cam/4.jpg"],
                    [["badger", "fox"], ["fox", "badger"], [], ["fox", "badger"]],
                    [[0.7, 0.3], [0.2, 0.8], [], [0.95, 0.05]], errors={2: "cannot read file"})
    d = decide_labels(t, Policy(Thresholds.parse("species=0.75")))
    assert d["prediction"].tolist() == ["", "badger", "", "fox"]  # best first, whatever the order given
    assert d["prediction_source"].tolist() == ["none", "model", "", "model"]
    assert d["prediction_rank"].tolist() == [""] * 4 and d["error"].notna().tolist() == [False, False, True, False]
    assert d["prediction_score"].tolist()[1] == pytest.approx(0.8)
    thresholds = tmp_path / "t.csv"
    thresholds.write_text("rank,taxon,threshold\nspecies,badger,0.6\n")
    assert decide_labels(t, Policy(Thresholds.parse("0.75", thresholds)))["prediction"].tolist()[0] == "badger"

    timed = t.set_column(t.schema.get_field_index("datetime"), "datetime",
                         pa.array(["2024-05-01T02:00:00", "2024-05-01T02:00:05", None, "2024-05-01T05:00:00"]))
    [(_, ev)] = list(decide_tables([timed], Policy(Thresholds.parse("0.72")), events=True, labels=True))
    # photos 1 and 2 are one event (mean badger 0.75), which names photo 1's animal too; photo 4 is
    # hours later, an event of its own
    assert ev["prediction"].tolist() == ["badger", "badger", "", "fox"]
    assert ev["prediction_source"].tolist() == ["event", "model", "", "model"] and ev["event"][0] == ev["event"][1]
    with pytest.raises(InputError, match="location prior needs a Tree-of-Life vocabulary"):
        decide_labels(t, Policy(prior=object()))
