"""Vocabularies: the published layout, exact chunked softmax, rank roll-up, subsets, caches."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import taxoclip.textbank as tb
from taxoclip.models import load_model
from taxoclip.textbank import TextBank, VocabularyError
from helpers import write_vocabulary


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def vocab(tmp_path):
    return write_vocabulary(tmp_path / "emb", dim=32, n=500, zero_columns=(3, 250))


def _reference(vocab, feats, scale, dtype=torch.float32):
    """Softmax over every non-zero column of the published [D, N] matrix (stored as `dtype`), in fp64."""
    emb = torch.from_numpy(np.load(vocab / "txt_emb_species.npy")).to(dtype).double().numpy()
    names = json.loads((vocab / "txt_emb_species.json").read_text())
    keep = np.abs(emb).sum(0) > 0
    p = torch.softmax(torch.from_numpy(feats.double().numpy() @ emb[:, keep]) * scale, dim=1)
    return p, [n for n, k in zip(names, keep) if k]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_top_k_is_the_exact_softmax_over_the_whole_vocabulary(vocab, dtype, monkeypatch):
    monkeypatch.setattr(tb, "CHUNK_ROWS", 64)  # many chunks: the streaming maths must not matter
    bank = TextBank.from_published(vocab, dtype=dtype)
    assert len(bank) == 498  # the two all-zero columns are gone
    feats = torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)
    # bf16 storage rounds the vocabulary itself; given the stored vectors, the best rows are
    # rescored in fp32 and only the rest of the partition function keeps bf16 products
    want, names = _reference(vocab, feats, 30.0, dtype)
    probs, idx = bank.top_k(feats, 7, 30.0)
    wv, wi = want.topk(7, dim=1)
    assert torch.allclose(probs.double(), wv, rtol=1e-5 if dtype == torch.float32 else 2e-4)
    assert torch.equal(idx, wi)
    assert [bank.taxon(i).ranks for i in idx[0].tolist()] == [tuple(names[j][0]) for j in wi[0].tolist()]


def test_k_larger_than_the_vocabulary_and_bad_k(vocab):
    full = TextBank.from_published(vocab, dtype=torch.float32)
    bank = full.where("genus", [full.table.genus[0]])
    feats = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1)
    probs, idx = bank.top_k(feats, 1000, 10.0)
    assert probs.shape == (2, len(bank)) and torch.allclose(probs.sum(1), torch.ones(2))
    with pytest.raises(ValueError, match="positive"):
        bank.top_k(feats, 0, 10.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_higher_rank_score_is_the_sum_of_its_species(vocab, dtype, monkeypatch):
    monkeypatch.setattr(tb, "CHUNK_ROWS", 100)
    bank = TextBank.from_published(vocab, dtype=dtype)
    feats = torch.nn.functional.normalize(torch.randn(3, 32), dim=-1)
    want, names = _reference(vocab, feats, 20.0, dtype)
    fam = pd.Series(["|".join(n[0][:5]) for n in names])
    sums = pd.DataFrame(want.numpy().T).groupby(fam.values).sum()
    probs, gid = bank.rollup(feats, "family", 4, 20.0)
    _, groups = bank.groups("family")
    for b in range(3):
        got = {"|".join(groups.iloc[g].tolist()): p for g, p in zip(gid[b].tolist(), probs[b].tolist())}
        best = sums[b].sort_values(ascending=False).head(4)
        assert list(got) == list(best.index)
        for name, p in got.items():  # in bf16, species outside the best 64 are summed from bf16 products
            assert p == pytest.approx(sums[b][name], rel=1e-5 if dtype == torch.float32 else 1e-3)


def test_min_prob_leaves_small_species_out_of_the_sums(vocab):
    bank = TextBank.from_published(vocab, dtype=torch.float32)
    feats = torch.nn.functional.normalize(torch.randn(1, 32), dim=-1)
    full, _ = bank.rollup(feats, "kingdom", 3, 50.0, min_prob=0.0)
    cut, _ = bank.rollup(feats, "kingdom", 3, 50.0, min_prob=1e-3)
    assert full.sum() == pytest.approx(1.0, abs=1e-5)
    assert cut.sum() < full.sum()


def test_conversion_is_cached_and_keyed_by_the_source(vocab):
    a = TextBank.from_published(vocab, dtype=torch.bfloat16)
    b = TextBank.from_published(vocab / "txt_emb_species.npy", dtype=torch.bfloat16)
    assert a.cache_dir == b.cache_dir
    write_vocabulary(vocab, dim=32, n=400, seed=1)  # new content, new cache entry
    c = TextBank.from_published(vocab, dtype=torch.bfloat16)
    assert c.cache_dir != a.cache_dir and len(c) == 400


def test_published_vocabulary_of_a_model_from_the_hf_cache(offline_hub):
    m = load_model("bioclip-2", precision="fp32")
    bank = TextBank.from_published(model=m)
    assert bank.dim == m.embed_dim and bank.dtype == torch.float32 and len(bank) == 298
    assert TextBank.from_published(model="hf-hub:imageomics/bioclip-2", dtype=torch.bfloat16).dtype == torch.bfloat16


def test_mismatched_names_file_is_a_clear_error(vocab):
    (vocab / "txt_emb_species.json").write_text(json.dumps([[["A"] * 7, ""]]))
    with pytest.raises(VocabularyError, match="500 columns but .* lists 1 taxa"):
        TextBank.from_published(vocab)


def test_subsets_by_rank_and_by_pybioclip_csv(vocab, tmp_path):
    bank = TextBank.from_published(vocab, dtype=torch.float32)
    families = bank.table.family.unique()[:2].tolist()
    sub = bank.where("family", families)
    assert set(sub.table.family) == set(families) and len(sub) == bank.table.family.isin(families).sum()
    species = bank.label_data().species.iloc[:3].tolist()
    csv = tmp_path / "subset.csv"
    pd.DataFrame({"Species": species}).to_csv(csv, index=False)
    assert bank.subset_from_csv(csv).label_data().species.tolist() == species
    feats = torch.nn.functional.normalize(torch.randn(1, 32), dim=-1)
    probs, idx = bank.subset_from_csv(csv).top_k(feats, 5, 10.0)
    assert probs.shape == (1, 3) and probs.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_subset_errors_name_the_problem(vocab, tmp_path):
    bank = TextBank.from_published(vocab, dtype=torch.float32)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"tribe": ["X"]}).to_csv(bad, index=False)
    with pytest.raises(VocabularyError, match="first column of .*bad.csv is named 'tribe'"):
        bank.subset_from_csv(bad)
    with pytest.raises(VocabularyError, match="unknown genus .*Nosuchgenus"):
        bank.where("genus", ["Nosuchgenus"])


def test_label_banks_are_renormalised_template_means_and_cached(tiny_model_dir, monkeypatch):
    m = load_model(str(tiny_model_dir), precision="fp32", text=True)
    bank = TextBank.from_labels(m, ["red fox", "grey wolf"], templates=["a photo of a {}.", "a {} in the wild."])
    e = m.encode_text(["a photo of a red fox.", "a red fox in the wild."]).mean(0)
    assert torch.allclose(bank.embeddings()[0], e / e.norm(), atol=1e-6)
    calls = []
    monkeypatch.setattr(m, "encode_text", lambda *a, **k: calls.append(1))
    TextBank.from_labels(m, ["red fox", "grey wolf"], templates=["a photo of a {}.", "a {} in the wild."])
    assert not calls  # served from the cache


def test_taxa_table_bank_uses_the_vocabulary_text(tiny_model_dir, tmp_path):
    m = load_model(str(tiny_model_dir), precision="fp32", text=True)
    csv = tmp_path / "taxa.csv"
    pd.DataFrame({"kingdom": ["Animalia"] * 2, "genus": ["Vulpes", "Canis"], "species": ["Vulpes vulpes", "Canis lupus"],
                  "common_name": ["red fox", "wolf"]}).to_csv(csv, index=False)
    bank = TextBank.from_taxa(m, csv, templates="photo")
    assert bank.label_data().species.tolist() == ["Vulpes vulpes", "Canis lupus"]
    want = m.encode_text(["a photo of Animalia Vulpes vulpes red fox."])[0]
    assert torch.allclose(bank.embeddings()[0], want, atol=1e-6)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"name": ["fox"]}).to_csv(bad, index=False)
    with pytest.raises(VocabularyError, match="no rank columns"):
        TextBank.from_taxa(m, bad)


def test_compact_layout_keeps_every_top_choice_and_a_quarter_of_the_bytes(vocab, tmp_path):
    """int8 rows + one scale each (what the bundled model ships) read back as an ordinary bank."""
    bank = TextBank.from_published(vocab)
    out = bank.save_compact(tmp_path / "compact")
    compact = TextBank.from_published(out)
    assert len(compact) == len(bank) and compact.table.equals(bank.table[tb.TAXA_COLUMNS])
    a, b = bank.embeddings(), compact.embeddings()
    assert torch.allclose((a * b).sum(1), torch.ones(len(a)), atol=2e-4)  # cosine of each row with its copy
    feats = torch.nn.functional.normalize(torch.randn(64, 32), dim=-1)
    pa, ia = bank.top_k(feats, 1, 10.0)
    pb, ib = compact.top_k(feats, 1, 10.0)
    assert torch.equal(ia, ib) and torch.allclose(pa, pb, rtol=5e-2)  # scale 10, 32-d: a few % per score
    assert (out / tb.COMPACT_EMB).stat().st_size < 0.3 * (vocab / "txt_emb_species.npy").stat().st_size


def test_damaged_compact_vocabulary_is_a_clear_error(vocab, tmp_path):
    out = TextBank.from_published(vocab).save_compact(tmp_path / "compact")
    (out / tb.COMPACT_EMB).write_bytes(b"not a safetensors file")
    with pytest.raises(VocabularyError, match="is damaged"):
        TextBank.from_published(out)


def test_taxa_bank_with_a_caption_text_type(tiny_model_dir, tmp_path):
    """A model trained on captions embeds a taxa table with one of them (taxoclip-mini: `taxon`)."""
    m = load_model(str(tiny_model_dir), precision="fp32")
    taxa = pd.DataFrame({"kingdom": ["Animalia"], "phylum": ["Chordata"], "class": ["Aves"], "order": [""],
                         "family": [""], "genus": [""], "species": [""], "common_name": ["birds"]})
    bank = TextBank.from_taxa(m, taxa, text="taxon", templates="none")
    want = m.encode_text(["a photo of Animalia Chordata Aves."])
    assert torch.allclose(bank.embeddings(), want, atol=1e-5)


def test_int8_bank_scores_exactly_as_its_float_copy(vocab, tmp_path, monkeypatch):
    """A compact vocabulary is scanned in int8 (a quarter of the memory) with the same answers as
    the float32 rows it stands for, subsets included."""
    monkeypatch.setattr(tb, "CHUNK_ROWS", 64)
    out = TextBank.from_published(vocab).save_compact(tmp_path / "compact")
    q = TextBank.from_published(out)
    f = TextBank.from_published(out, dtype=torch.float32)
    assert q.dtype == torch.int8 and f.dtype == torch.float32
    assert torch.allclose(q.embeddings(), f.embeddings(), atol=1e-6)
    feats = torch.nn.functional.normalize(torch.randn(8, 32), dim=-1)
    (pq, iq), (pf, i_f) = q.top_k(feats, 5, 30.0), f.top_k(feats, 5, 30.0)
    assert torch.equal(iq, i_f) and torch.allclose(pq, pf, rtol=1e-5)
    keep = np.arange(len(q)) % 3 == 0
    (pq, iq), (pf, i_f) = q.subset(keep).top_k(feats, 3, 30.0), f.subset(keep).top_k(feats, 3, 30.0)
    assert torch.equal(iq, i_f) and torch.allclose(pq, pf, rtol=1e-5)
    gq, gf = q.rollup(feats, "family", 3, 30.0), f.rollup(feats, "family", 3, 30.0)
    assert torch.equal(gq[1], gf[1]) and torch.allclose(gq[0], gf[0], rtol=1e-5)


def test_packed_int8_bank_scores_as_its_float_copy(vocab, tmp_path, monkeypatch):
    """Packed for the CPU's int8 product (how a server scans its small batches), an int8 bank
    gives the float32 rows' answers: the best rows, their scores, roll-ups and decision masses."""
    if not tb.Int8Rows.available():
        pytest.skip("no FBGEMM int8 product on this CPU")
    monkeypatch.setattr(tb, "CHUNK_ROWS", 64)
    out = TextBank.from_published(vocab).save_compact(tmp_path / "compact")
    q, f = TextBank.from_published(out), TextBank.from_published(out, dtype=torch.float32)
    assert q.pack_int8() and not f.pack_int8()  # only int8 rows pack
    feats = torch.nn.functional.normalize(torch.randn(tb.INT8_MAX_BATCH, 32), dim=-1)
    for batch in (feats[:1], feats[:9], feats):
        (pq, iq), (pf, i_f) = q.top_k(batch, 5, 30.0), f.top_k(batch, 5, 30.0)
        assert torch.equal(iq, i_f) and torch.allclose(pq, pf, rtol=1e-5)
    gq, gf = q.rollup(feats, "family", 3, 30.0), f.rollup(feats, "family", 3, 30.0)
    assert torch.equal(gq[1], gf[1]) and torch.allclose(gq[0], gf[0], rtol=1e-5)
    (rq, _, mq), (rf, _, mf) = q.masses(feats, 30.0, 5, 3), f.masses(feats, 30.0, 5, 3)
    assert torch.allclose(rq, rf, rtol=1e-5) and torch.allclose(mq[tb.Rank.ORDER][0], mf[tb.Rank.ORDER][0], rtol=1e-5)
    sub = q.subset(np.arange(len(q)) % 3 == 0)
    assert sub.pack_int8()
    (pq, iq), (pf, i_f) = sub.top_k(feats, 3, 30.0), f.subset(np.arange(len(f)) % 3 == 0).top_k(feats, 3, 30.0)
    assert torch.equal(iq, i_f) and torch.allclose(pq, pf, rtol=1e-5)


@pytest.mark.parametrize("compact", [False, True])
def test_joined_banks_are_one_softmax_over_both(vocab, tmp_path, compact):
    """`concat` (how prototypes join a vocabulary): the exact softmax over every row of both banks,
    a subset's rows and an int8 bank's rows included, with the joined rows' weights kept."""
    bank = TextBank.from_published(vocab)
    if compact:
        bank = TextBank.from_published(bank.save_compact(tmp_path / "compact"))
    bank = bank.subset(np.arange(len(bank)) % 2 == 0)
    extra_rows = torch.nn.functional.normalize(torch.randn(3, 32), dim=-1) * torch.tensor([[1.0], [0.5], [2.0]])
    table = pd.DataFrame({c: ["X"] * 3 for c in tb.RANK_COLUMNS[:6]} | {"species_epithet": ["a", "b", "c"],
                                                                       "common_name": [""] * 3})
    joined = bank.concat(TextBank.from_arrays(extra_rows, table, name="mine"))
    assert len(joined) == len(bank) + 3 and joined.dtype == bank.dtype
    assert joined.table["species_epithet"].tolist()[-3:] == ["a", "b", "c"]
    feats = torch.nn.functional.normalize(torch.randn(6, 32), dim=-1)
    rows = torch.cat([bank.embeddings(), extra_rows])
    expected = torch.softmax(feats @ rows.T * 20.0, dim=1)
    p, i = joined.top_k(feats, 5, 20.0)
    assert torch.allclose(p, expected.gather(1, i), rtol=5e-2 if compact else 1e-5)  # int8: a few % per score
    assert torch.equal(i[:, 0], expected.argmax(1))
    with pytest.raises(VocabularyError, match="cannot join"):
        bank.concat(TextBank.from_arrays(torch.ones(1, 8), table.iloc[:1]))


def test_take_values_gives_the_same_values_from_arrow_and_python_columns(tmp_path):
    """Result rows read Arrow-backed bank tables through Arrow, and other tables through numpy."""
    names = pd.DataFrame({"genus": ["Puma", "Vulpes", "Ursus", "Lynx"] * 3})
    names.to_parquet(tmp_path / "t.parquet")
    arrow = tb._read_arrow_parquet(tmp_path / "t.parquet")
    positions = np.array([5, 0, 0, 11, 2])
    expected = ["Vulpes", "Puma", "Puma", "Lynx", "Ursus"]
    assert isinstance(arrow["genus"].dtype, pd.ArrowDtype)
    assert tb.take_values(arrow["genus"], positions) == expected
    assert tb.take_values(names["genus"].astype(object), positions) == expected
