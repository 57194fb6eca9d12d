"""``camkit serve`` as a user runs it: the command in a subprocess on loopback, a load test
(answers equal the library's, memory flat), the page in a real browser (Debian's chromium driven by
Selenium) and no file written outside the server's temporary directory."""
from __future__ import annotations

import base64
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("fastapi_offline")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import camkit  # noqa: E402
from camkit.data import resize_image  # noqa: E402
from camkit.data.imageio import read_image  # noqa: E402
from camkit.data.photos import sample_files  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-4
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT = os.environ.get("CAMKIT_SERVE_SCREENSHOT")  # also save the page's screenshot here (docs/serve.png)


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, dirs: dict[str, Path], lines: list[str]) -> None:
        self.proc, self.url, self.dirs, self.lines = proc, url, dirs, lines

    def rss_mb(self) -> float:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    dirs = {k: base / k for k in ("home", "cwd", "tmp")}
    for d in dirs.values():
        d.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MPL", "XDG_"))}
    env.update(HOME=str(dirs["home"]), TMPDIR=str(dirs["tmp"]), PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "camkit", "serve", "--models", "efficientnet_lite0,digits_resnet", "--port", "0",
           "--threads", "1", "--max-batch", "16", "--max-queue", "256", "--timeout", "120", "--read-timeout", "3"]
    proc = subprocess.Popen(cmd, cwd=dirs["cwd"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    url = None
    deadline = time.monotonic() + 180
    while url is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if m := re.search(r"(http://127\.0\.0\.1:\d+)/", line):
            url = m.group(1)
    if url is None:
        proc.kill()
        pytest.fail("camkit serve did not start:\n" + "".join(lines) + (proc.stdout.read() or ""))
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # keep the pipe drained
    yield Server(proc, url, dirs, lines)
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def _files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def _photo(i: int, size: int = 96) -> bytes:
    """A small distinct photo: a crop of a bundled photo, as PNG."""
    from PIL import Image

    im = Image.open(sample_files()["chelsea"]).convert("RGB")
    x0, y0 = (i * 23) % (im.width - size), (i * 17) % (im.height - size)
    buf = io.BytesIO()
    im.crop((x0, y0, x0 + size, y0 + size)).save(buf, format="PNG")
    return buf.getvalue()


def test_loopback_load_answers_equal_the_library_and_memory_stays_flat(server):
    model = camkit.models.load("digits_resnet")
    clients, per_client = 16, 4
    images = [_photo(i) for i in range(clients)]
    refs = []
    for data in images:
        x = resize_image(read_image(io.BytesIO(data)), tuple(model.input_size))[None]
        refs.append(camkit.GradCAM(model, layer=model.default_layer).explain(x, targets=camkit.TopK(2)))
    results: dict[tuple[int, int], dict] = {}
    errors: list[str] = []

    def client(i: int, rounds: int) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            for r in range(rounds):
                resp = c.post("/explain", files={"image": (f"{i}.png", images[i], "image/png")},
                              data={"model": "digits_resnet", "methods": "gradcam", "target": "top2"})
                if resp.status_code != 200:
                    errors.append(f"{resp.status_code} {resp.text[:200]}")
                else:
                    results[(i, r)] = resp.json()

    def burst(rounds: int) -> None:
        threads = [threading.Thread(target=client, args=(i, rounds)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)

    start = time.monotonic()
    burst(2)  # warm-up: first calls, allocator pools, every batch size
    warm = server.rss_mb()
    results.clear()
    burst(per_client)
    grown = server.rss_mb() - warm
    took = time.monotonic() - start
    print(f"server RSS {warm:.0f} MB after the warm-up rounds, {grown:+.1f} MB after {clients * per_client} more requests")
    assert not errors, errors[:3]
    assert len(results) == clients * per_client
    batched = 0
    for (i, _r), body in results.items():
        items = body["maps"]["gradcam"]
        assert [it["class"] for it in items] == refs[i].targets[0].tolist()
        for it, ref in zip(items, refs[i].maps[0]):
            got = np.load(io.BytesIO(base64.b64decode(it["npy"])))
            np.testing.assert_allclose(got, ref.numpy(), atol=ATOL, rtol=0)
        batched += body["timings"]["batch_size"]["gradcam"] > 1
    assert batched > 0  # 16 concurrent clients: some requests shared a forward
    assert grown < 40, f"server memory grew by {grown:.1f} MB over {clients * per_client} requests"
    assert took < 240


def _chrome(profile: Path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} missing: .ci/run installs chromium and chromium-driver with apt-get")
        pytest.skip(f"{missing} not installed (apt-get install chromium chromium-driver)")
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager look for a driver or browser online
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console: CSP refusals, 404s
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def test_the_page_in_a_real_browser(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = _chrome(tmp_path / "profile")
    try:
        driver.set_page_load_timeout(60)
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "input[name=method]")) == len(camkit.list_methods()))
        wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 2)
        Select(driver.find_element(By.ID, "model")).select_by_value("efficientnet_lite0")
        photo = sample_files()["chelsea"]
        driver.find_element(By.ID, "file").send_keys(str(photo))
        for box in driver.find_elements(By.CSS_SELECTOR, "input[name=method]"):
            if box.is_selected() != (box.get_attribute("value") in ("gradcam", "eigencam")):
                box.click()
        Select(driver.find_element(By.ID, "target-kind")).select_by_value("top1")
        wait.until(lambda d: d.find_element(By.ID, "explain").is_enabled())
        driver.find_element(By.ID, "explain").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "figure.result img.heat")) == 2
                   or "error" in d.find_element(By.ID, "status").get_attribute("class"))
        assert driver.find_element(By.ID, "status").text == ""
        sizes = driver.execute_script(
            "return [...document.querySelectorAll('figure.result img')].map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        from PIL import Image

        w, h = Image.open(photo).size
        assert sizes == [[True, w, h]] * 5  # the photo, then photo + map twice, at the image's own size
        # at 1400 px the photo and its maps sit side by side, each scaled to one column, nothing overflows
        boxes = driver.execute_script(
            "return [...document.querySelectorAll('#results figure.result')].map(f => { const r = "
            "f.querySelector('img').getBoundingClientRect(); return [f.className, r.top, r.left, r.right, r.width]; })")
        assert [b[0] for b in boxes] == ["result input", "result", "result"]
        assert max(b[1] for b in boxes) - min(b[1] for b in boxes) < 1, boxes  # one row
        assert boxes[0][2] < boxes[1][2] < boxes[2][2] and max(b[3] for b in boxes) <= 1400, boxes
        assert max(b[4] for b in boxes) - min(b[4] for b in boxes) < 1, boxes  # the same width
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        captions = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "figure.result:not(.input) .label")]
        assert [c.split(" ·")[0] for c in captions] == ["gradcam", "eigencam"]
        classes = driver.find_element(By.ID, "classes").text.lower()
        assert "cat" in classes and "cat" in captions[0].lower()  # ImageNet weights: an Egyptian / tiger cat
        # a class found by typing its name: one map per method, of that class
        Select(driver.find_element(By.ID, "target-kind")).select_by_value("class")
        driver.find_element(By.ID, "class-name").send_keys("tiger cat")
        assert driver.find_element(By.ID, "class-hint").text == "class 282: tiger cat"
        driver.find_element(By.ID, "explain").click()
        wait.until(lambda d: all("(282)" in e.text for e in d.find_elements(By.CSS_SELECTOR, "figure.result:not(.input) .label")))
        assert len(driver.find_elements(By.CSS_SELECTOR, "figure.result img.heat")) == 2
        opacity = driver.find_element(By.ID, "opacity")
        driver.execute_script("arguments[0].value = 80; arguments[0].dispatchEvent(new Event('input'))", opacity)
        assert driver.execute_script("return document.querySelector('img.heat').style.opacity") == "0.8"
        driver.execute_script("arguments[0].value = 50; arguments[0].dispatchEvent(new Event('input'))", opacity)
        height = driver.execute_script("return document.querySelector('main').getBoundingClientRect().bottom")
        driver.set_window_size(1400, min(max(int(height) + 140, 600), 2000))  # the whole page in the screenshot
        png = driver.get_screenshot_as_png()
        assert Image.open(io.BytesIO(png)).size[0] > 0
        if SCREENSHOT:
            Path(SCREENSHOT).write_bytes(png)
        driver.get(server.url + "/docs")  # the API docs render offline, under their own policy
        WebDriverWait(driver, 60).until(lambda d: "/explain" in d.find_element(By.TAG_NAME, "body").text)
        console = [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert not console, console  # no refusal by the Content-Security-Policy, no 404 (the favicon)
    finally:
        driver.quit()


def test_big_uploads_at_once_keep_memory_bounded(server):
    """Four 9-megapixel PNGs (50 kB files) sent together: decoded to 1024 px, at most two at a time
    (before: +1.76 GB peak for four 16-megapixel uploads; now about +0.2 GB)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (3000, 3000), (90, 120, 30)).save(buf, format="PNG")
    data = buf.getvalue()
    try:
        Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current size
    except OSError as e:
        pytest.skip(f"cannot reset the server's peak memory here: {e}")
    before = server.rss_mb()
    codes: list[int] = []

    def send() -> None:
        codes.append(httpx.post(server.url + "/explain", files={"image": ("big.png", data, "image/png")},
                                data={"model": "digits_resnet"}, timeout=120).status_code)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{server.proc.pid}/status").read_text()).group(1)) / 1024
    print(f"server peak memory +{peak - before:.0f} MB over four 9-megapixel uploads at once")
    assert codes == [200] * 4
    assert peak - before < 500


def test_a_stalled_client_is_answered_408_and_the_server_serves_on(server):
    import socket

    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
                  b"Content-Length: 100000\r\n\r\n--zz\r\n")  # then nothing more (--read-timeout 3)
        assert httpx.get(server.url + "/health", timeout=30).status_code == 200  # others are served meanwhile
        answer = b""
        while chunk := s.recv(4096):  # the server closes the connection after its answer
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 408") and "stopped arriving" in answer


def test_bad_upload_over_loopback_and_no_files_outside_the_temp_dir(server):
    r = httpx.post(server.url + "/explain", files={"image": ("x.txt", b"plain text", "text/plain")}, timeout=60)
    assert r.status_code == 415 and "not an image" in r.json()["detail"]
    assert httpx.get(server.url + "/health", timeout=60).json()["status"] == "ok"
    rebound = httpx.get(server.url + "/models", headers={"host": "attacker.example:8000"}, timeout=60)
    assert rebound.status_code == 403 and rebound.headers["x-content-type-options"] == "nosniff"
    time.sleep(0.5)  # the log lines reach the pipe
    log = "".join(server.lines)
    assert "camkit serve: POST /explain -> 415: the upload" in log and "GET /models -> 403: Host" in log
    assert "Traceback" not in log
    running = _files(server.dirs["tmp"])
    assert running and all(p.startswith("camkit-serve-") for p in running)  # its own temp dir only
    server.proc.send_signal(signal.SIGTERM)  # as a process manager stops it (Ctrl-C: SIGINT, the same path)
    assert server.proc.wait(60) == 0
    assert _files(server.dirs["home"]) == [] and _files(server.dirs["cwd"]) == []
    assert _files(server.dirs["tmp"]) == []  # removed on exit
