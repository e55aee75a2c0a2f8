"""The HTTP service on 127.0.0.1: answers as the CLI does, batches, and refuses hostile input
cleanly while it keeps serving the next request."""
import io
import struct
import threading
import zipfile
import zlib

import httpx
import pytest
import uvicorn

from helpers import bio_mini_photo
from taxoclip.serve import ServeSettings, UploadLimits, create_app
from taxoclip.serve.batching import Batcher, QueueFull
from taxoclip.serve.service import IdentificationService


class LiveServer:
    """uvicorn in a thread, on 127.0.0.1 and a free port; stopped by `close`."""

    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:  # uvicorn sets it once the socket listens
            if not self.thread.is_alive():
                raise RuntimeError("server did not start")
            self.thread.join(0.05)
        host, self.port = self.server.servers[0].sockets[0].getsockname()[:2]
        assert host == "127.0.0.1"
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def service():
    svc = IdentificationService(precision="fp32")
    yield svc
    svc.batcher.stop()


@pytest.fixture(scope="module")
def live(service):
    limits = UploadLimits(max_bytes=8 * 2**20, max_request_bytes=64 * 2**20, max_pixels=50_000_000)
    srv = LiveServer(create_app(ServeSettings(limits=limits), service=service))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def client(live):
    with httpx.Client(base_url=live.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def apple(request):
    """A bio-mini apple leaf (JPEG bytes) and its labels; without the corpus a synthetic photo and
    None (the answers are then checked for form, not for the species)."""
    try:
        return bio_mini_photo(request.getfixturevalue("bio_mini"), "apple")
    except pytest.skip.Exception:
        return request.getfixturevalue("photos")[0].read_bytes(), None


def _predict(client, files, **form):
    return client.post("/v1/predict", files=[("files", f) for f in files], data=form)


def _assert_serving(client, apple):
    r = _predict(client, [("ok.jpg", apple[0], "image/jpeg")], k="1")
    best = r.json()["results"][0]["candidates"][0]
    assert r.status_code == 200 and best["name"] == (apple[1]["species"] if apple[1] else best["lineage"]["genus"]
                                                      + " " + best["lineage"]["species"])


def test_predict_names_a_real_photo_with_its_lineage(client, apple):
    data, rec = apple
    r = _predict(client, [("leaf.jpg", data, "image/jpeg")], k="3")
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert res["file_name"] == "leaf.jpg" and res["rank"] == "species" and len(res["candidates"]) == 3
    best = res["candidates"][0]
    assert best["name"] == best["lineage"]["genus"] + " " + best["lineage"]["species"]
    assert list(best["lineage"]) == ["kingdom", "phylum", "class", "order", "family", "genus", "species"]
    if rec:
        assert best["name"] == rec["species"] and best["lineage"]["family"] == rec["family"]
    scores = [c["score"] for c in res["candidates"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1


def test_same_answer_as_the_python_api(client, apple, service, tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(apple[0])
    offline = service.classifier.predict([str(photo)], rank="family", k=3)
    served = _predict(client, [("a.jpg", apple[0], "image/jpeg")], rank="family", k="3").json()["results"][0]
    assert [c["name"] for c in served["candidates"]] == [row["family"] for row in offline]
    assert [c["score"] for c in served["candidates"]] == pytest.approx([row["score"] for row in offline], rel=1e-5)


def test_custom_labels_and_subsets(client, apple):
    data, rec = apple
    r = _predict(client, [("a.jpg", data, "image/jpeg")], labels="apple leaf, a dog, a car")
    cands = r.json()["results"][0]["candidates"]
    assert {c["label"] for c in cands} == {"apple leaf", "a dog", "a car"}
    assert sum(c["score"] for c in cands) == pytest.approx(1, abs=1e-5)
    if rec:
        assert cands[0]["label"] == "apple leaf"
    r = _predict(client, [("a.jpg", data, "image/jpeg")], subset="Felidae,Canidae", subset_rank="family", k="50")
    fams = {c["lineage"]["family"] for c in r.json()["results"][0]["candidates"]}
    assert fams <= {"Felidae", "Canidae"} and fams
    r = _predict(client, [("a.jpg", data, "image/jpeg")], subset="Notafamilia", subset_rank="family")
    assert r.status_code == 422 and "Notafamilia" in r.json()["detail"]
    assert _predict(client, [("a.jpg", data, "image/jpeg")], rank="subspecies").status_code == 422


def test_several_photos_one_bad_each_gets_its_own_answer(client, apple):
    r = _predict(client, [("a.jpg", apple[0], "image/jpeg"), ("bad.jpg", b"not an image at all", "image/jpeg"),
                          ("b.jpg", apple[0], "image/jpeg")], k="1")
    res = r.json()["results"]
    assert r.status_code == 200 and [x["file_name"] for x in res] == ["a.jpg", "bad.jpg", "b.jpg"]
    assert "error" in res[1] and "bad.jpg" in res[1]["error"]
    assert res[0]["candidates"] == res[2]["candidates"]


def test_embed_search_models_health_metrics_and_openapi(client, apple):
    r = client.post("/v1/embed", files=[("files", ("a.jpg", apple[0], "image/jpeg"))]).json()
    vec = r["results"][0]["embedding"]
    assert r["dim"] == len(vec) == 128 and sum(v * v for v in vec) == pytest.approx(1, abs=1e-4)
    taxa = client.get("/v1/taxa", params={"q": "MALUS DOM"}).json()["taxa"]
    assert taxa[0]["name"] == "Malus domestica" and taxa[0]["family"] == "Rosaceae"
    assert any(t["matched"] == "common" for t in client.get("/v1/taxa", params={"q": "apple"}).json()["taxa"])
    model = client.get("/v1/models").json()["models"][0]
    assert model["id"] == "taxoclip-mini" and model["vocabulary"]["taxa"] >= 300_000
    assert client.get("/healthz").json() == {"status": "ok"} and client.get("/readyz").json()["status"] == "ready"
    assert client.get("/v1/scan-me-123").status_code == 404
    metrics = client.get("/metrics").text
    assert 'taxoclip_requests_total{route="/v1/embed",status="200"}' in metrics
    assert 'route="other",status="404"' in metrics and "scan-me" not in metrics  # no label per random URL
    assert "taxoclip_batch_photos_bucket" in metrics and "taxoclip_queue_photos" in metrics
    assert "taxoclip_batch_seconds_bucket" in metrics
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (the header of a decompression bomb)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x.txt", "hello")
    return buf.getvalue()


@pytest.mark.parametrize("name, data, status, says", [
    ("bomb.png", _png_header(20000, 10000), 413, "200 megapixels"),
    ("zip.jpg", _zip(), 415, "not a JPEG"),
    ("pic.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', 415, "not a JPEG"),
    ("page.jpg", b"<!doctype html><html><body>hi</body></html>", 415, "not a JPEG"),
    ("empty.jpg", b"", 422, "empty"),
])
def test_hostile_files_are_refused_and_the_server_goes_on(client, apple, name, data, status, says):
    r = _predict(client, [(name, data, "image/jpeg")])
    assert r.status_code == 200
    err = r.json()["results"][0]["error"]
    assert name in err and says in err
    _assert_serving(client, apple)


def test_truncated_jpeg_and_path_traversal_names(client, apple):
    r = _predict(client, [("../../etc/passwd.jpg", apple[0][: len(apple[0]) // 2], "image/jpeg")])
    res = r.json()["results"][0]
    assert res["file_name"] == "passwd.jpg" and "error" in res
    _assert_serving(client, apple)


def test_huge_upload_is_refused_before_it_is_read(live, client, apple):
    """1 GB declared (refused from its Content-Length) or streamed without one (counted as it
    arrives): either way the server stops reading long before the end and keeps serving."""
    sent = 0

    def body():
        nonlocal sent
        sent = 0
        yield (b'--x\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n'
               b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff")
        chunk = b"\0" * 2**20
        for _ in range(1024):  # 1 GB, if the server read it all
            sent += len(chunk)
            yield chunk
        yield b"\r\n--x--\r\n"
    kind = {"content-type": "multipart/form-data; boundary=x"}
    for headers in ({**kind, "content-length": str(2**30 + 200)}, kind):
        try:
            r = httpx.post(f"{live.url}/v1/predict", content=body(), headers=headers, timeout=120)
            assert r.status_code == 413, r.text
        except httpx.TransportError:  # the server answered 413 and closed while we were still sending
            pass
        assert sent < 2**30 // 4, sent
    _assert_serving(client, apple)


def test_a_full_queue_answers_503_with_retry_after(client, service, apple):
    limit = service.batcher.max_queue
    service.batcher.max_queue = 0  # every photo would overflow it
    try:
        r = _predict(client, [("a.jpg", apple[0], "image/jpeg")])
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
    finally:
        service.batcher.max_queue = limit
    _assert_serving(client, apple)


def test_api_key_is_required_when_set(service, apple):
    srv = LiveServer(create_app(ServeSettings(api_key="s3cret"), service=service))
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            files = [("files", ("a.jpg", apple[0], "image/jpeg"))]
            assert c.post("/v1/predict", files=files).status_code == 401
            assert c.post("/v1/predict", files=files, headers={"x-api-key": "wrong"}).status_code == 401
            assert c.get("/v1/models", headers={"authorization": "Bearer s3cret"}).status_code == 200
            ok = c.post("/v1/predict", files=files, headers={"x-api-key": "s3cret"})
            assert ok.status_code == 200 and ok.json()["results"][0]["candidates"]
            assert c.get("/healthz").status_code == 200  # liveness needs no key
    finally:
        srv.close()


def test_batcher_counts_photos_and_refuses_beyond_its_queue():
    import torch

    ran = []
    b = Batcher(lambda jobs: [ran.append(len(jobs)) or len(j.pixels) for j in jobs], max_batch=8, max_queue=3)
    f1 = b.submit(torch.zeros(2, 3, 4, 4), "a")
    with pytest.raises(QueueFull):
        b.submit(torch.zeros(2, 3, 4, 4), "a")  # 2 + 2 > 3, and nothing runs until started
    f2 = b.submit(torch.zeros(1, 3, 4, 4), "b")
    b.start()
    assert (f1.result(10), f2.result(10)) == (2, 1) and sum(ran) >= 2 and b.depth == 0
    b.stop()


def test_batcher_runs_calls_in_its_own_thread_between_batches():
    """The model's torch work outside batches (loading, label sets) must share the batch thread."""
    import torch

    where = []
    b = Batcher(lambda jobs: [where.append(threading.current_thread()) or len(j.pixels) for j in jobs])
    assert b.call(threading.current_thread) is threading.current_thread()  # not started: runs here
    b.start()
    try:
        batch_thread = b.call(threading.current_thread)
        assert batch_thread is not threading.current_thread()
        assert b.submit([torch.zeros(3, 4, 4)] * 2, "a").result(10) == 2 and where == [batch_thread]
        with pytest.raises(ZeroDivisionError):  # a failing call reaches its caller; the thread goes on
            b.call(lambda: 1 / 0)
        assert b.call(lambda: b.call(lambda: 7)) == 7  # a call from the batch thread runs at once
    finally:
        b.stop()


def test_a_batch_closes_when_photos_stop_coming_not_only_at_its_deadline():
    import torch

    b = Batcher(lambda jobs: [len(j.pixels) for j in jobs], max_batch=64, max_wait_s=60, quiet_s=0.05).start()
    try:
        assert b.submit([torch.zeros(3, 4, 4)], "a").result(30) == 1  # well before the 60-s deadline
    finally:
        b.stop()


def test_an_upload_too_big_for_the_decode_budget_is_refused_413_and_one_that_fits_is_decoded(giant_at_100k_pixels):
    from taxoclip.io.budget import DecodeBudget
    from taxoclip.models import ImagePreprocess
    from taxoclip.serve.uploads import UploadRejected, decode_upload

    from PIL import Image

    buf = io.BytesIO()
    Image.effect_noise((1200, 900), 60).convert("RGB").save(buf, "TIFF")  # decoded whole, under a reservation
    pre, limits = ImagePreprocess(size=32), UploadLimits()
    with pytest.raises(UploadRejected, match="scan.tif: needs ~4 MB to decode, more than the decode memory budget") as e:
        decode_upload("scan.tif", buf.getvalue(), pre, limits, budget=DecodeBudget(2 * 2**20))
    assert e.value.status == 413
    assert decode_upload("scan.tif", buf.getvalue(), pre, limits, budget=DecodeBudget(64 * 2**20)).shape == (3, 32, 32)
