"""``camkit serve``'s JSON API through an in-process client: answers equal the library's, dynamic
batching, the bounded queue, timeouts and bad input."""
from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("fastapi_offline")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

import camkit  # noqa: E402
from camkit.data import resize_image  # noqa: E402
from camkit.data.imageio import read_image  # noqa: E402
from camkit.data.photos import sample_files  # noqa: E402
from camkit.serve import create_app  # noqa: E402
from camkit.serve.batching import Batcher, QueueFull  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ATOL = 1e-4  # a map from a batch of several images vs the library on the image alone (float rounding)


class Stopper:
    """A user pre-hook that parks the next ``n`` forwards of the model until released; ``reached``
    is set once all ``n`` are parked (two: one in each queue's worker)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.left = 0
        self.lock = threading.Lock()
        self.reached, self.release = threading.Event(), threading.Event()
        self.handle = model.register_forward_pre_hook(self)

    def arm(self, n: int = 1) -> None:
        self.reached.clear()
        self.release.clear()
        self.left = n

    def __call__(self, *_):
        with self.lock:
            if self.left == 0:
                return
            self.left -= 1
            if self.left == 0:
                self.reached.set()
        assert self.release.wait(60)


@pytest.fixture(scope="module")
def digits():
    return camkit.models.load("digits_resnet")


@pytest.fixture(scope="module")
def client(digits):
    app = create_app({"digits_resnet": digits}, max_batch=8, window_ms=5, max_queue=16, workers=1, timeout=30,
                     max_image_mb=0.05, max_megapixels=0.3)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


def _png(h: int = 40, w: int = 56, seed: int = 0, flat: bool = False) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.full((h, w, 3), 90, np.uint8) if flat else rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _post(client, data: bytes, **fields):
    fields.setdefault("model", "digits_resnet")
    return client.post("/explain", files={"image": ("x.png", data, "image/png")}, data=fields)


def _npy(item) -> np.ndarray:
    a = np.load(io.BytesIO(base64.b64decode(item["npy"])))
    assert a.dtype == np.float32
    return a


def _library(model, data: bytes, method: str, targets):
    x = resize_image(read_image(io.BytesIO(data)), tuple(model.input_size))[None]
    return camkit.create(method, model, layer=model.default_layer).explain(x, targets=targets)


# -- the page, the listings, the docs ---------------------------------------------------------------------------

def test_listings_page_and_docs(client):
    assert client.get("/models").json() == [
        {"name": "digits_resnet", "input_size": [64, 64], "num_classes": 10, "default_layer": "layer4"}]
    methods = {m["name"]: m for m in client.get("/methods").json()}
    assert list(methods) == camkit.list_methods()
    assert methods["guided-backprop"]["output"] == "attribution" and methods["gradcam"]["output"] == "map"
    assert client.get("/models/digits_resnet/classes").json() == [str(i) for i in range(10)]
    samples = client.get("/samples").json()
    assert {s["id"] for s in samples} == set(sample_files())
    r = client.get(samples[0]["url"])
    assert r.status_code == 200 and r.content == sample_files()[samples[0]["id"]].read_bytes()
    page = client.get("/").text
    assert "camkit" in page and "/static/app.js" in page and "http" not in page.replace("http-equiv", "")
    for asset in ("/static/app.js", "/static/style.css"):
        body = client.get(asset).text
        assert client.get(asset).status_code == 200 and "://" not in body  # no CDN
    docs = client.get("/docs").text
    assert "swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    js = docs.split('src="')[1].split('"')[0]
    assert js.startswith("/") and client.get(js).status_code == 200
    spec = client.get("/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/explain"]["post"]["requestBody"]["content"]


# -- answers equal the library's -----------------------------------------------------------------------------------

@pytest.mark.parametrize("target,spec", [("top1", None), ("top3", camkit.TopK(3)), ("7", 7)])
def test_explain_equals_the_library(client, digits, target, spec):
    data = _png()
    methods = ["gradcam", "ablationcam", "eigencam", "guided-backprop"]
    r = _post(client, data, methods=",".join(methods), target=target)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "digits_resnet" and body["image"] == {"width": 56, "height": 40}
    logits = _library(digits, data, "gradcam", None).logits[0]
    probs = logits.softmax(0)
    assert [c["index"] for c in body["classes"]] == probs.topk(5).indices.tolist()
    np.testing.assert_allclose([c["score"] for c in body["classes"]], probs.topk(5).values.numpy(), rtol=1e-5)
    assert [c["name"] for c in body["classes"]] == [str(c["index"]) for c in body["classes"]]
    for m in methods:
        e = _library(digits, data, m, spec)
        maps = e.maps[0] if spec is not None and not isinstance(spec, int) else e.maps[:1]
        classes = e.targets.reshape(-1).tolist()
        items = body["maps"][m]
        assert [it["class"] for it in items] == classes
        for it, ref in zip(items, maps):
            np.testing.assert_allclose(_npy(it), ref.numpy(), atol=ATOL, rtol=0)
            from PIL import Image

            for key in ("png", "heatmap"):
                im = Image.open(io.BytesIO(base64.b64decode(it[key])))
                assert im.format == "PNG" and im.size == (56, 40)  # at the image's own size
        assert set(body["timings"]["explain_ms"]) == set(methods)


def _queued_behind_busy_workers(client, model, images: list[bytes], parks: int, **fields) -> list:
    """Post ``images[0]``, park its first ``parks`` forwards (the workers are busy), post the other
    images while it waits, release once their jobs (one per method) are all queued: the answers."""
    stop = Stopper(model)
    out: dict[int, object] = {}
    n_methods = len(fields["methods"].split(","))

    def send(i: int) -> None:
        out[i] = _post(client, images[i], **fields)

    try:
        stop.arm(parks)
        first = threading.Thread(target=send, args=(0,))
        first.start()
        assert stop.reached.wait(30)
        rest = [threading.Thread(target=send, args=(i,)) for i in range(1, len(images))]
        for t in rest:
            t.start()
        deadline = time.monotonic() + 30
        while client.get("/health").json()["pending"] < n_methods * len(rest) and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.release.set()
        for t in [first, *rest]:
            t.join(60)
    finally:
        stop.release.set()
        stop.handle.remove()
    return [out[i] for i in range(len(images))]


def test_requests_arriving_together_share_one_batched_forward(client, digits):
    images = [_png(seed=s) for s in range(5)]
    # both workers busy with request 0 (gradcam; scorecam in the expensive methods' queue): 4 jobs queue in each
    out = _queued_behind_busy_workers(client, digits, images, 2, methods="gradcam,scorecam", target="top2")
    for m in ("gradcam", "scorecam"):
        sizes = [r.json()["timings"]["batch_size"][m] for r in out[1:]]
        assert sizes == [4, 4, 4, 4], (m, sizes)
    for i in range(5):
        body = out[i].json()
        probs = _library(digits, images[i], "gradcam", None).logits[0].softmax(0)  # image i's own classes
        assert [c["index"] for c in body["classes"]] == probs.topk(5).indices.tolist()
        np.testing.assert_allclose([c["score"] for c in body["classes"]], probs.topk(5).values.numpy(), rtol=1e-4)
        for m in ("gradcam", "scorecam"):
            ref = _library(digits, images[i], m, camkit.TopK(2))
            assert [it["class"] for it in body["maps"][m]] == ref.targets[0].tolist()
            for it, r in zip(body["maps"][m], ref.maps[0]):
                np.testing.assert_allclose(_npy(it), r.numpy(), atol=ATOL, rtol=0)


def test_queued_requests_share_batches_of_at_most_max_batch(digits):
    """``max_batch=3``: seven requests queued behind a busy worker run as batches of 3, 3 and 1."""
    app = create_app({"digits_resnet": digits}, max_batch=3, max_queue=16, workers=1, timeout=60)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        out = _queued_behind_busy_workers(c, digits, [_png(seed=i) for i in range(8)], 1, methods="gradcam")
    sizes = sorted(r.json()["timings"]["batch_size"]["gradcam"] for r in out[1:])
    assert sizes == [1, 3, 3, 3, 3, 3, 3], sizes


def test_full_queue_answers_503_and_timeouts_504(digits):
    app = create_app({"digits_resnet": digits}, max_batch=1, max_queue=2, workers=1, timeout=1.0)
    stop = Stopper(digits)
    try:
        with TestClient(app, base_url="http://127.0.0.1") as c:
            stop.arm()
            box: dict = {}
            t = threading.Thread(target=lambda: box.update(r=_post(c, _png(), methods="gradcam")))
            t.start()
            assert stop.reached.wait(30)  # the worker is held; the first request will time out
            waiting = threading.Thread(target=lambda: box.update(w=_post(c, _png(), methods="gradcam,eigencam")))
            waiting.start()  # fills the queue (2 jobs)
            deadline = time.monotonic() + 10
            while c.get("/health").json()["pending"] < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            full = _post(c, _png(), methods="gradcam")
            assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1
            assert "busy" in full.json()["detail"]
            t.join(30)
            waiting.join(30)
            assert box["r"].status_code == 504 and "timeout" in box["r"].json()["detail"]
            assert box["w"].status_code == 504
            stop.release.set()
            ok = _post(c, _png(), methods="gradcam")  # still serving
            assert ok.status_code == 200, ok.text
    finally:
        stop.release.set()
        stop.handle.remove()


def test_batcher_skips_cancelled_and_expired_jobs():
    seen = []
    gate = threading.Event()

    def run(key, payloads):
        gate.wait(10)
        seen.append(list(payloads))
        return [p * 10 for p in payloads]

    b = Batcher(run, max_batch=4, window=0.0, max_queue=3, workers=1)
    try:
        (busy,) = b.submit([("k", 0)], timeout=10)
        time.sleep(0.05)  # the worker takes job 0 and waits on the gate
        late, gone = b.submit([("k", 1), ("k", 2)], timeout=0.01)
        gone.future.cancel()
        with pytest.raises(QueueFull):
            b.submit([("k", 3), ("k", 4)], timeout=10)
        time.sleep(0.05)
        gate.set()
        assert busy.future.result(10) == 0
        with pytest.raises(TimeoutError):
            late.future.result(10)
        (ok,) = b.submit([("k", 5)], timeout=10)
        assert ok.future.result(10) == 50
        assert seen == [[0], [5]]  # the expired and the cancelled job never ran
    finally:
        gate.set()
        b.close()


# -- bad input: 4xx with a clear message, and the server keeps serving -----------------------------------------------

BAD = [
    (dict(files={"image": ("notes.txt", b"hello, not an image", "text/plain")}, data={"model": "digits_resnet"}),
     415, "not an image"),
    (dict(files={"image": ("big.png", b"\x89PNG" + bytes(80_000), "image/png")}, data={}), 413, "MB"),
    (dict(files={"image": ("wide.png", None, "image/png")}, data={}), 413, "megapixels"),
    (dict(files={"image": ("x.png", None, "image/png")}, data={"model": "resnet9000"}), 422, "unknown model"),
    (dict(files={"image": ("x.png", None, "image/png")}, data={"methods": "gradcan"}), 422, "Did you mean 'gradcam'"),
    (dict(files={"image": ("x.png", None, "image/png")}, data={"methods": " , "}), 422, "methods is empty"),
    (dict(files={"image": ("x.png", None, "image/png")}, data={"target": "12"}), 422, "out of range"),
    (dict(files={"image": ("x.png", None, "image/png")}, data={"target": "top99"}), 422, "K must be"),
    (dict(files={"image": ("x.png", None, "image/png")}, data={"target": "cat"}), 422, "target must be"),
    (dict(files={"model": (None, b"digits_resnet")}), 400, "'image' must be an uploaded file"),
    (dict(files={"image": ("x.png", None, "image/png"), "model": ("m.txt", b"digits_resnet", "text/plain")}),
     400, "must be text"),
    (dict(content=b"image=abc", headers={"content-type": "application/x-www-form-urlencoded"}), 400, "multipart"),
    (dict(content=b"--zz\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc",
          headers={"content-type": "multipart/form-data; boundary=zz"}), 400, "image"),
]


@pytest.mark.parametrize("request_kw,status,words", BAD, ids=[f"{b[1]}-{b[2][:16]}" for b in BAD])
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(client, request_kw, status, words):
    kw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in request_kw.items()}
    if "image" in kw.get("files", {}):
        name, data, ctype = kw["files"]["image"]
        if data is None:
            data = _png(300, 1200, flat=True) if name == "wide.png" else _png()
        kw["files"]["image"] = (name, data, ctype)
    r = client.post("/explain", **kw)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert _post(client, _png(), methods="gradcam").status_code == 200


def test_unknown_routes_and_samples(client):
    assert client.get("/samples/nope").status_code == 404
    assert "unknown sample" in client.get("/samples/nope").json()["detail"]
    assert client.get("/models/nope/classes").status_code == 422
