"""``camkit serve`` under hostile or careless use: the request deadline covers encoding, slow bodies
time out, targets (huge or unicode digits, class names), only five image formats, bounded decoding
and answers, expensive methods in their own queue, the methods allow-list, Host / Origin checks and
security headers, one log line per failure, and the batcher's own invariants (batch cap, its lock)."""
from __future__ import annotations

import asyncio
import base64
import copy
import io
import logging
import struct
import threading
import time
import zlib
from collections import deque

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("fastapi_offline")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

import camkit  # noqa: E402
from camkit.data import resize_image  # noqa: E402
from camkit.data.imageio import read_image  # noqa: E402
from camkit.serve import create_app  # noqa: E402
from camkit.serve import encoding  # noqa: E402
from camkit.serve.batching import Batcher  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
LOCAL = "http://127.0.0.1"
NAMES = ["zero", "one", "tabby, tabby cat", "crane", "crane", "espresso", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def digits():
    return camkit.models.load("digits_resnet")


@pytest.fixture(scope="module")
def named(digits):
    """The digits net with class names: ``espresso`` is class 5, ``crane`` names two classes."""
    m = copy.deepcopy(digits)
    m.categories = NAMES
    return m


@pytest.fixture(scope="module")
def client(digits, named):
    app = create_app({"digits_resnet": digits, "named": named}, max_batch=4, timeout=30, max_image_mb=2,
                     max_megapixels=16)
    with TestClient(app, base_url=LOCAL) as c:
        yield c


def _image(w: int = 56, h: int = 40, fmt: str = "PNG", seed: int = 0, flat: bool = False) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.full((h, w, 3), 90, np.uint8) if flat else rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _post(client, data: bytes, **fields):
    fields.setdefault("model", "digits_resnet")
    return client.post("/explain", files={"image": ("x.png", data, "application/octet-stream")}, data=fields)


def _library(model, data: bytes, method: str, targets):
    x = resize_image(read_image(io.BytesIO(data)), tuple(model.input_size))[None]
    return camkit.create(method, model, layer=model.default_layer).explain(x, targets=targets)


def _npy(item) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(item["npy"])))


# -- the deadline covers the whole request; a stalled body is a 408 ---------------------------------------------

def test_the_deadline_covers_encoding(digits, monkeypatch):
    app = create_app({"digits_resnet": digits}, timeout=2.0)
    start = {}
    png_bytes = encoding.png_bytes

    def slow_png(picture):  # the first map's encoding runs past the request's deadline (1 s margin)
        time.sleep(max(0.0, start["t"] + 3.0 - time.monotonic()))
        return png_bytes(picture)

    monkeypatch.setattr(encoding, "png_bytes", slow_png)
    with TestClient(app, base_url=LOCAL) as c:
        start["t"] = time.monotonic()
        r = _post(c, _image(), methods="gradcam", target="top3")  # 3 maps to encode
    assert r.status_code == 504, r.text[:300]
    assert "timeout of 2 s" in r.json()["detail"]


def test_a_stalled_body_is_answered_408(digits):
    app = create_app({"digits_resnet": digits}, timeout=30, read_timeout=0.3)
    boundary = "zz"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    async def stalled():
        yield head + _image()[:100]
        await asyncio.sleep(60)  # a client that stops sending
        yield b""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as c:
            return await c.post("/explain", content=stalled(),
                                headers={"content-type": f"multipart/form-data; boundary={boundary}"})

    r = asyncio.run(asyncio.wait_for(send(), 20))
    assert r.status_code == 408 and "stopped arriving" in r.json()["detail"]


# -- targets ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target,words", [
    pytest.param("1" * 5000, "out of range", id="5000-digits"),  # int() of > 4,300 digits raised ValueError: a 500
    ("３", "digits 0-9"),  # a unicode digit was read as class 3
    ("top１", "target must be"),
    ("1" * 40, "out of range"),
])
def test_odd_digit_targets_are_422(client, target, words):
    r = _post(client, _image(), methods="gradcam", target=target)
    assert r.status_code == 422, r.text[:300]
    assert words in r.json()["detail"]


@pytest.mark.parametrize("target,index", [("espresso", 5), ("ESPRESSO", 5), ("  Espresso ", 5), ("tabby cat", 2),
                                          ("Tabby,  tabby cat", 2), ("5", 5)])
def test_a_class_name_is_a_target(client, named, target, index):
    data = _image(seed=3)
    r = _post(client, data, model="named", methods="gradcam", target=target)
    assert r.status_code == 200, r.text[:300]
    (item,) = r.json()["maps"]["gradcam"]
    assert item["class"] == index and item["name"] == NAMES[index]
    ref = _library(named, data, "gradcam", index).maps[0]
    np.testing.assert_allclose(_npy(item), ref.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("target,words", [("expresso", "Did you mean 'espresso' (class 5)"),
                                          ("crane", "names 2 classes: 3 (crane), 4 (crane); give the index"),
                                          ("zzzz", "GET /models/NAME/classes")])
def test_a_class_name_miss_suggests_close_names(client, target, words):
    r = _post(client, _image(), model="named", methods="gradcam", target=target)
    assert r.status_code == 422 and words in r.json()["detail"], r.text[:300]


# -- formats, bombs, bounded decoding ---------------------------------------------------------------------------

def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header says ``w`` x ``h`` (a decompression bomb's first bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_413(client):
    r = _post(client, _png_header_only(30_000, 30_000), methods="gradcam")  # 900 megapixels: Pillow's own refusal
    assert r.status_code == 413, r.text[:300]
    assert "megapixels" in r.json()["detail"]


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
       b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")


@pytest.mark.parametrize("kind", ["GIF", "PPM", "ICO", "EPS"])
def test_formats_other_than_the_five_are_415(client, kind):
    data = EPS if kind == "EPS" else _image(32, 32, fmt=kind)
    r = _post(client, data, methods="gradcam")
    assert r.status_code == 415, r.text[:300]
    assert "PNG, JPEG, WebP, BMP or TIFF" in r.json()["detail"] and "not one of these formats" in r.json()["detail"]


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "WEBP", "BMP", "TIFF"])
def test_the_five_formats_are_read(client, kind):
    r = _post(client, _image(fmt=kind), methods="gradcam")
    assert r.status_code == 200, r.text[:300]
    assert r.json()["image"] == {"width": 56, "height": 40}


@pytest.mark.parametrize("kind,w,h", [("PNG", 3000, 2000), ("JPEG", 4000, 2400)])
def test_large_images_are_decoded_to_at_most_1024_px(client, kind, w, h):
    from PIL import Image

    data = _image(w, h, fmt=kind, flat=True)
    shown = (1024, round(h * 1024 / w))
    r = _post(client, data, methods="gradcam")
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert body["image"] == {"width": w, "height": h}
    (item,) = body["maps"]["gradcam"]
    assert Image.open(io.BytesIO(base64.b64decode(item["png"]))).size == shown

    from camkit.serve.decoding import MAX_SIDE, decode_image

    decoded = decode_image(data, 16_000_000)
    assert MAX_SIDE == 1024 and (decoded.width, decoded.height) == (w, h)
    assert decoded.pixels.dtype == torch.uint8 and tuple(decoded.image.shape) == (3, shown[1], shown[0])
    np.testing.assert_allclose(decoded.image.numpy(), 90 / 255, atol=2 / 255)  # a flat grey stays flat grey


def test_too_many_pixels_is_413_before_decoding(client):
    r = _post(client, _png_header_only(5000, 4000), methods="gradcam")  # 20 megapixels: a header, no pixels
    assert r.status_code == 413 and "megapixels" in r.json()["detail"]


# -- the answer's format and size cap ---------------------------------------------------------------------------

def test_map_formats_and_the_answer_cap(digits):
    data = _image(200, 150, seed=2)
    app = create_app({"digits_resnet": digits}, max_response_mb=0.05)
    with TestClient(app, base_url=LOCAL) as c:
        full = _post(c, data, methods="gradcam,guided-backprop", target="top3")
        assert full.status_code == 413, full.text[:300]
        detail = full.json()["detail"]
        assert "cap of 0.05 MB" in detail and "format=float16 (about 0.1 MB)" in detail
        small = _post(c, data, methods="gradcam", target="top3", format="float16")
        assert small.status_code == 200, small.text[:300]
        png = _post(c, _image(200, 150, flat=True), methods="gradcam", target="top1", format="PNG")
        assert png.status_code == 200, png.text[:300]
        bad = _post(c, data, methods="gradcam", format="jpeg")
        assert bad.status_code == 422 and "format must be one of all, png, float16" in bad.json()["detail"]
    ref = _library(digits, data, "gradcam", camkit.TopK(3)).maps[0]
    items = small.json()["maps"]["gradcam"]
    assert [set(it) for it in items] == [{"class", "name", "npy"}] * 3
    for it, r in zip(items, ref):
        a = _npy(it)
        assert a.dtype == np.float16
        np.testing.assert_allclose(a.astype(np.float32), r.numpy(), atol=1e-3, rtol=0)  # float16 rounding of [0, 1]
    assert set(png.json()["maps"]["gradcam"][0]) == {"class", "name", "png", "heatmap"}


def test_the_default_answer_keeps_its_shape(client):
    r = _post(client, _image(), methods="gradcam")
    (item,) = r.json()["maps"]["gradcam"]
    assert set(item) == {"class", "name", "png", "heatmap", "npy"} and _npy(item).dtype == np.float32


# -- cost: expensive methods wait in their own queue; the allow-list ------------------------------------------

class Park:
    """A forward pre-hook that parks the model's next forward (whichever thread runs it) until released."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.reached, self.release = threading.Event(), threading.Event()
        self.done = False
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, *_):
        if not self.done:
            self.done = True
            self.reached.set()
            assert self.release.wait(60)


def test_an_expensive_method_does_not_hold_the_others(digits):
    """One worker: a Score-CAM request (its class says ``expensive``) parked in its first forward
    must not keep a Grad-CAM request waiting (before: the Grad-CAM request timed out, 504)."""
    assert camkit.methods.get("scorecam").expensive and not camkit.methods.get("gradcam").expensive
    app = create_app({"digits_resnet": digits}, workers=1, timeout=10)
    park = Park(digits)
    box: dict = {}
    try:
        with TestClient(app, base_url=LOCAL) as c:
            slow = threading.Thread(target=lambda: box.update(slow=_post(c, _image(), methods="scorecam")))
            slow.start()
            assert park.reached.wait(30)  # Score-CAM is running (parked) in its own worker
            fast = _post(c, _image(seed=1), methods="gradcam")
            assert fast.status_code == 200, fast.text[:300]
            assert not box  # answered while Score-CAM still runs
            park.release.set()
            slow.join(60)
            assert box["slow"].status_code == 200
    finally:
        park.release.set()
        park.handle.remove()


def test_the_methods_allow_list(digits):
    app = create_app({"digits_resnet": digits}, methods=["gradcam", "EigenCAM"])
    with TestClient(app, base_url=LOCAL) as c:
        assert [m["name"] for m in c.get("/methods").json()] == ["gradcam", "eigencam"]
        r = _post(c, _image(), methods="gradcam,scorecam")
        assert r.status_code == 422 and "'scorecam' is not served here" in r.json()["detail"]
        assert _post(c, _image(), methods="eigencam").status_code == 200
    with pytest.raises(camkit.CamkitError, match="unknown method"):
        create_app({"digits_resnet": digits}, methods=["gradcan"])


def test_methods_are_listed_in_plain_text(client):
    import re

    listed = client.get("/methods").json()
    assert [m["name"] for m in listed] == camkit.list_methods()
    for m in listed:
        assert "`" not in m["summary"] and not re.search(r":\w+:", m["summary"]), m
    by_name = {m["name"]: m for m in listed}
    assert by_name["gradcam"]["summary"] == "Grad-CAM (Selvaraju et al. 2017): w_c = 1/(hw) sum_ij dS/dA_cij."
    assert by_name["guided-backprop"]["summary"].endswith("with the guided rule at every ReLU (see GuidedReLUMode).")
    assert by_name["scorecam"]["expensive"] is True and by_name["gradcam"]["expensive"] is False


# -- Host / Origin, headers, favicon, logs ------------------------------------------------------------------------

@pytest.mark.parametrize("host,ok", [("127.0.0.1:8000", True), ("localhost", True), ("[::1]:8000", True),
                                     ("LOCALHOST.:80", True), ("evil.example:8000", False), ("127.0.0.2", False)])
def test_host_names_other_than_loopback_are_refused(client, host, ok):
    r = client.get("/models", headers={"host": host})
    assert r.status_code == (200 if ok else 403), r.text[:300]
    if not ok:
        assert "not a name of this server" in r.json()["detail"]


def test_configured_host_names(digits):
    with TestClient(create_app({"d": digits}, allowed_hosts=["cams.example"]), base_url="http://cams.example") as c:
        assert c.get("/models").status_code == 200
        assert c.get("/models", headers={"host": "127.0.0.1"}).status_code == 403
    with TestClient(create_app({"d": digits}, allowed_hosts=["*"]), base_url="http://anything.example") as c:
        assert c.get("/models").status_code == 200


@pytest.mark.parametrize("origin,ok", [("http://127.0.0.1", True), ("http://evil.example", False), ("null", False),
                                       ("http://127.0.0.1:9999", False)])
def test_requests_from_other_sites_pages_are_refused(client, origin, ok):
    r = client.post("/explain", files={"image": ("x.png", _image(), "image/png")}, data={"model": "digits_resnet"},
                    headers={"origin": origin})
    assert r.status_code == (200 if ok else 403), r.text[:300]


def test_security_headers_and_favicon(client):
    from PIL import Image

    for path in ("/", "/methods", "/static/app.js", "/docs"):
        r = client.get(path)
        assert r.status_code == 200
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp
        assert ("'unsafe-inline'" in csp) == (path == "/docs"), (path, csp)  # Swagger UI's start-up script only
    assert "script-src 'self';" in client.get("/").headers["content-security-policy"]
    assert client.get("/nope").headers["x-content-type-options"] == "nosniff"
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    im = Image.open(io.BytesIO(icon.content))
    assert im.format == "ICO" and im.size == (32, 32)
    assert 'rel="icon" href="/favicon.ico"' in client.get("/").text


def test_failures_are_one_log_line_and_no_traceback(digits, monkeypatch, caplog):
    app = create_app({"digits_resnet": digits})

    def broken(*_a, **_k):
        raise RuntimeError("boom\nsecond line")

    with TestClient(app, base_url=LOCAL) as c:  # raise_server_exceptions: an escaping exception fails here
        monkeypatch.setattr(app.state.server.explainer, "item", broken)
        with caplog.at_level(logging.INFO):
            r = _post(c, _image(), methods="gradcam")
            bad = _post(c, b"not an image", methods="gradcam")
    assert r.status_code == 500 and r.json()["detail"] == "internal error: RuntimeError: boom second line"
    assert bad.status_code == 415
    records = [rec for rec in caplog.records if rec.name == "camkit.serve"]
    assert [rec.getMessage().split(":")[0] for rec in records] == ["POST /explain -> 500", "POST /explain -> 415"]
    assert all(rec.exc_info is None and "\n" not in rec.getMessage() for rec in records)
    assert not [rec for rec in caplog.records if rec.exc_info]  # no traceback logged anywhere


def test_a_loud_warning_when_not_on_loopback():
    from camkit.serve.command import exposure_warning

    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        assert exposure_warning(host) is None
    for host in ("0.0.0.0", "::", "192.168.1.20"):
        text = exposure_warning(host)
        assert text and f"listens on {host}" in text and "no login" in text and "--allowed-hosts" in text


def test_the_command_line_passes_the_new_limits(monkeypatch):
    import camkit.serve
    from camkit.cli import main

    seen = {}
    monkeypatch.setattr(camkit.serve, "run", lambda specs, **kw: seen.update(kw, specs=specs))
    threads = torch.get_num_threads()
    try:
        assert main(["serve", "--models", "digits_resnet", "--methods", "gradcam,eigencam", "--allowed-hosts",
                     "cams.example", "--read-timeout", "5", "--max-response-mb", "8", "--max-expensive-queue", "2",
                     "--expensive-workers", "1", "--threads", "1"]) == 0
        assert seen["methods"] == ["gradcam", "eigencam"] and seen["allowed_hosts"] == ["cams.example"]
        assert (seen["read_timeout"], seen["max_response_mb"], seen["max_expensive_queue"]) == (5, 8, 2)
        seen.clear()
        assert main(["serve", "--models", "digits_resnet", "--threads", "1"]) == 0
        assert seen["methods"] is None and seen["allowed_hosts"] is None
    finally:
        torch.set_num_threads(threads)


# -- the batcher: its batch cap and its lock ----------------------------------------------------------------------

def test_batches_never_exceed_max_batch():
    seen = []
    gate = threading.Event()

    def run(key, payloads):
        gate.wait(10)
        seen.append(list(payloads))
        return list(payloads)

    b = Batcher(run, max_batch=3, window=0.0, max_queue=16, workers=1)
    try:
        (first,) = b.submit([("k", 0)], timeout=10)
        deadline = time.monotonic() + 10
        while b.pending() and time.monotonic() < deadline:
            time.sleep(0.005)  # the worker took job 0 and waits on the gate
        jobs = b.submit([("k", i) for i in range(1, 8)], timeout=10)
        gate.set()
        assert [j.future.result(10) for j in [first, *jobs]] == list(range(8))
    finally:
        gate.set()
        b.close()
    assert seen == [[0], [1, 2, 3], [4, 5, 6], [7]]


class Guarded(deque):
    """The batcher's pending queue, failing any touch by a thread that does not hold the batcher's lock."""

    def __init__(self, cond: threading.Condition, failures: list[str]) -> None:
        super().__init__()
        self.cond, self.failures = cond, failures

    def _check(self, what: str) -> None:
        if not self.cond._is_owned():
            self.failures.append(f"{what} in {threading.current_thread().name} without the lock")


for _name in ("append", "extend", "remove", "popleft", "clear", "__iter__", "__len__", "__contains__",
              "__getitem__", "__bool__"):
    def _wrap(name=_name):
        original = getattr(deque, name, None)
        if original is None:
            return

        def guarded(self, *args):
            self._check(name)
            return original(self, *args)
        setattr(Guarded, name, guarded)
    _wrap()


def test_every_touch_of_the_queue_holds_the_lock():
    """Deterministic: a queue that records each access made without the batcher's lock, through
    every path (submit, batch taking, cancel, pending, expiry, close) with two workers."""
    failures: list[str] = []
    release = threading.Event()

    def run(key, payloads):
        release.wait(10)
        return list(payloads)

    b = Batcher(run, max_batch=2, window=0.001, max_queue=32, workers=2)
    with b._cond:
        b._pending = Guarded(b._cond, failures)
    try:
        jobs = b.submit([("a", i) for i in range(6)] + [("b", i) for i in range(4)], timeout=10)
        b.cancel(jobs[7:8])
        assert b.pending() >= 0
        late = b.submit([("a", 99)], timeout=0.0)
        release.set()
        for j in jobs[:7] + jobs[8:]:
            assert j.future.result(10) is not None
        with pytest.raises(TimeoutError):
            late[0].future.result(10)
    finally:
        release.set()
        b.close()
    assert not failures, failures[:5]
