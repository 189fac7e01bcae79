"""The labelling page (s5cl label): answers saved at once and atomically, nothing lost on a
restart, and the page itself driven in a real browser (Debian's chromium, headless, through
selenium and chromium-driver; `make test` installs them as root, as it does slurm)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from s5cl.errors import UserError
from s5cl.labelling.page import LabelStore, open_session, serve
from s5cl.labelling.selection import select
from s5cl.labelling.suggestion_files import contact_sheet, to_label_table
from tests.conftest import PBC, ROOT

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def _suggestions(folder: Path, *sets: str) -> Path:
    """`folder` with a dataset packed by the real download and prepare stages (params.yaml
    with `sets`), and six suggested images (k-center on their pixels) with the probabilities
    of a logistic regression fitted on 20 of them: what the suggest stage writes, without
    training a network."""
    from sklearn.linear_model import LogisticRegression

    shutil.copy(ROOT / "params.yaml", folder)
    args = [arg for item in sets for arg in ("--set", item)]
    for stage in ("download", "prepare"):
        subprocess.run([sys.executable, ROOT / "stages" / f"{stage}.py", *args], cwd=folder,
                       check=True, capture_output=True)  # fmt: skip
    packed = next((folder / "data/packed").iterdir())
    index = pd.read_parquet(packed / "index.parquet")
    names = json.loads((packed / "stats.json").read_text())["class_names"]
    images = np.memmap(packed / "images.u8", np.uint8, "r").reshape(len(index), -1)
    rows = np.random.default_rng(0).permutation(len(index))[:400]
    x, y = images[rows].astype(float) / 255, index["label"].to_numpy()[rows]
    labels = np.full(400, -1)
    labels[:20] = y[:20]
    probabilities = LogisticRegression(max_iter=1000).fit(x[:20], y[:20]).predict_proba(x)
    chosen, scores = select("kcenter", x, 6, 0, labels, probabilities, len(names))
    table = to_label_table(rows[chosen], index["path"].to_numpy()[rows[chosen]], scores,
                           probabilities[chosen], names)  # fmt: skip
    (folder / "suggest").mkdir()
    table.to_csv(folder / "suggest/to_label.csv", index=False)
    (folder / "labels").mkdir()
    return folder


@pytest.fixture(scope="module")
def suggested(tmp_path_factory) -> Path:
    """Digits: an array dataset, whose images have no file of their own."""
    return _suggestions(tmp_path_factory.mktemp("labelling"))


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    """pbc-240's blood cells (360 x 363 JPEGs in class folders, each file named after its
    class): the page must show the original cell and no path."""
    if not PBC.is_dir():
        pytest.skip(f"{PBC} is absent (../shared not here)")
    return _suggestions(tmp_path_factory.mktemp("cells"), "data.name=folder", f"data.root={PBC}")


def test_contact_sheet_numbers_every_suggested_image(suggested, tmp_path):

    table = pd.read_csv(suggested / "suggest/to_label.csv")
    index = pd.read_parquet(suggested / "data/packed/digits/index.parquet")
    images = np.memmap(suggested / "data/packed/digits/images.u8", np.uint8, "r")
    images = images.reshape(len(index), 32, 32, 3)[table["row"]]
    contact_sheet(images, [f"{r}" for r in table["rank"]], tmp_path / "sheet.png")
    sheet = np.asarray(Image.open(tmp_path / "sheet.png").convert("L"))
    assert sheet.shape == (128 + 18, 6 * 128)
    for i in range(6):  # each cell holds its image: not blank
        assert sheet[:128, i * 128 : (i + 1) * 128].std() > 10


def test_answers_are_saved_at_once_and_survive_a_restart(suggested, tmp_path):
    labels = tmp_path / "labels" / "labels.csv"
    session = open_session(suggested / "suggest/to_label.csv", labels,
                           suggested / "data/packed/digits")  # fmt: skip
    first = session.state()["current"]
    assert first["rank"] == 1 and session.state()["total"] == 6
    session.act("answer", {"path": first["path"], "label": "3"})
    assert pd.read_csv(labels, dtype=str)[["path", "label"]].values.tolist() == [
        [first["path"], "3"]
    ]
    second = session.state()["current"]
    session.act("skip", {"path": second["path"]})
    third = session.state()["current"]
    session.act("answer", {"path": third["path"], "label": "8"})
    session.act("undo", {})  # forgets the 8
    assert len(pd.read_csv(labels)) == 1
    session.act("answer", {"path": third["path"], "label": "9"})
    assert not list(labels.parent.glob("*.tmp*"))  # written through a rename, nothing left
    again = open_session(suggested / "suggest/to_label.csv", labels,
                         suggested / "data/packed/digits")  # fmt: skip
    state = again.state()
    assert state["labeled"] == 2 and state["current"]["path"] == second["path"]  # skip forgotten
    with pytest.raises(Exception, match="unknown class 'ten'"):
        again.act("answer", {"path": second["path"], "label": "ten"})
    assert LabelStore(labels).labeled() == {first["path"], third["path"]}


@pytest.mark.skipif(
    not (CHROMIUM.exists() and DRIVER.exists()),
    reason="Debian's chromium and chromium-driver are not installed (make test installs them "
    "as root with apt-get)",
)
def test_the_page_in_a_real_browser_by_key_and_by_click(cells, tmp_path):
    """The page shows the original cell (read from its file, enlarged to 384 px on its shorter
    side) and a caption without the file's path, whose class folder would give the answer."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    labels = tmp_path / "labels.csv"
    session = open_session(cells / "suggest/to_label.csv", labels,
                           cells / "data/packed/folder")  # fmt: skip
    server = serve(session, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=900,1000"):  # fmt: skip
        options.add_argument(flag)
    browser = webdriver.Chrome(service=webdriver.ChromeService(str(DRIVER)), options=options)
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait = WebDriverWait(browser, 10)

        def progress(text):
            wait.until(lambda b: b.find_element(By.ID, "progress").text == text)

        progress("0 of 6 labeled, 0 skipped")
        paths = pd.read_csv(cells / "suggest/to_label.csv")["path"].tolist()
        image = browser.find_element(By.ID, "image")
        wait.until(lambda b: image.get_attribute("naturalWidth") not in (None, "0"))
        first = Image.open(paths[0])  # the original: 360 x 363, shown at 384 x 387
        shown = [int(image.get_attribute(a)) for a in ("naturalWidth", "naturalHeight")]
        assert shown == [round(side * 384 / min(first.size)) for side in first.size]
        assert image.get_attribute("class") == ""  # smooth, not pixelated
        caption = browser.find_element(By.ID, "meta").text
        assert caption.startswith("#1 (model: ") and "/" not in caption
        assert not any(name in caption.split(":")[0] for name in ("BA_", "EO_", "basophil"))
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("3")  # the third class: erythroblast
        progress("1 of 6 labeled, 0 skipped")
        browser.find_element(By.CSS_SELECTOR, 'button[data-label="platelet"]').click()
        progress("2 of 6 labeled, 0 skipped")
        body.send_keys("s")
        progress("2 of 6 labeled, 1 skipped")
        body.send_keys("u")  # undoes the platelet
        progress("1 of 6 labeled, 1 skipped")
        assert browser.find_element(By.ID, "image").get_attribute("data-path") == paths[1]
        body.send_keys("6")
        progress("2 of 6 labeled, 1 skipped")
        browser.save_screenshot(str(tmp_path / "page.png"))
    finally:
        browser.quit()
        server.shutdown()
        server.server_close()
    saved = pd.read_csv(labels, dtype=str)
    assert saved[["path", "label"]].values.tolist() == [
        [paths[0], "erythroblast"], [paths[1], "monocyte"]
    ]  # fmt: skip
    assert (tmp_path / "page.png").stat().st_size > 5000


@pytest.fixture
def page(suggested, tmp_path):
    """The labelling page's server on a free port, and the token its page carries."""
    import re
    import urllib.request

    session = open_session(suggested / "suggest/to_label.csv", tmp_path / "labels.csv",
                           suggested / "data/packed/digits")  # fmt: skip
    server = serve(session, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    html = urllib.request.urlopen(f"http://127.0.0.1:{port}/").read().decode()
    yield port, re.search(r'const TOKEN = "([^"]+)"', html).group(1), session
    server.shutdown()
    server.server_close()


def _request(port: int, method: str, path: str, headers: dict, body: bytes = b"") -> tuple:
    """A raw HTTP request, headers as given (Host included): (status, JSON answer)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for key, value in {"Host": f"127.0.0.1:{port}", **headers}.items():
        connection.putheader(key, value)
    connection.endheaders()
    if body:
        connection.send(body)
    response = connection.getresponse()
    answer = response.read()
    connection.close()
    return response.status, json.loads(answer) if answer.startswith(b"{") else answer


def test_the_page_answers_only_its_own_page(page, suggested, tmp_path, capfd):
    """What another web page in the same browser could send (a form POST as text/plain, a
    rebound DNS name, a foreign Origin, no token) and malformed requests: each a clean 4xx,
    nothing written, no traceback in the terminal."""
    port, token, session = page
    first = session.state()["current"]["path"]
    ok = {"X-S5CL-Token": token, "Content-Type": "application/json"}
    answer = json.dumps({"path": first, "label": "3"}).encode()
    sized = {"Content-Length": str(len(answer))}
    status, _ = _request(port, "POST", "/api/answer", {**ok, **sized}, answer)
    assert status == 200 and session.store.labeled() == {first}
    refused = [
        # a cross-site form: text/plain, no token (no CORS preflight for it)
        (403, "POST", "/api/undo", {"Content-Type": "text/plain", "Content-Length": "2"}, b"{}"),
        (415, "POST", "/api/undo", {"X-S5CL-Token": token, "Content-Type": "text/plain",
                                    "Content-Length": "2"}, b"{}"),
        (403, "GET", "/", {"Host": "attacker.example"}, b""),  # DNS rebinding
        (403, "GET", "/api/state", {"Host": f"attacker.example:{port}", **ok}, b""),
        (403, "POST", "/api/undo", {**ok, "Origin": "http://evil.example", "Content-Length": "2"},
         b"{}"),
        (403, "POST", "/api/undo", {**ok, "X-S5CL-Token": "guess", "Content-Length": "2"}, b"{}"),
        (403, "GET", "/api/state", {}, b""),
        (403, "GET", "/image/1", {}, b""),
        (400, "POST", "/api/undo", {**ok, "Content-Length": "abc"}, b""),
        (400, "POST", "/api/undo", {**ok, "Content-Length": "-5"}, b""),
        (413, "POST", "/api/skip", {**ok, "Content-Length": str(50 * 2**20)}, b""),
        (400, "POST", "/api/undo", {**ok, "Content-Length": "6"}, b"[1, 2]"),
        (400, "POST", "/api/undo", {**ok, "Content-Length": "5"}, b'"abc"'),
        (400, "POST", "/api/undo", {**ok, "Content-Length": "4"}, b"\xff\xfe{}"),
        (400, "POST", "/api/skip", {**ok, "Content-Length": "23"}, b'{"path": "/etc/passwd"}'),
        (400, "POST", "/api/answer", {**ok, "Content-Length": "2"}, b"{}"),
        (400, "POST", "/api/nothing", {**ok, "Content-Length": "2"}, b"{}"),
        (404, "GET", "/../../etc/passwd", ok, b""),
    ]  # fmt: skip
    for status, method, path, headers, body in refused:
        got, answer = _request(port, method, path, headers, body)
        assert got == status, (method, path, headers, answer)
        assert isinstance(answer, dict) and answer["error"], answer
    assert session.store.labeled() == {first}  # none of them undid or wrote anything
    status, state = _request(port, "GET", "/api/state", ok)
    assert status == 200 and state["labeled"] == 1
    status, image = _request(port, "GET", f"/image/1?token={token}", {})
    assert status == 200 and image.startswith(b"\x89PNG")
    assert "Traceback" not in capfd.readouterr().err


def test_two_pages_on_one_labels_file_lose_no_answer(suggested, tmp_path):
    """Two sessions answering into one file: each change is merged into the file as it is on
    disk, and undo forgets only the session's own last answer."""
    labels = tmp_path / "labels.csv"
    one, two = (open_session(suggested / "suggest/to_label.csv", labels,
                             suggested / "data/packed/digits") for _ in range(2))  # fmt: skip
    paths = one.queue["path"].tolist()
    one.act("answer", {"path": paths[0], "label": "1"})
    two.act("answer", {"path": paths[1], "label": "2"})
    one.act("answer", {"path": paths[2], "label": "3"})
    assert LabelStore(labels).labeled() == set(paths[:3])
    two.act("undo", {})  # two's own answer, not one's later one
    assert LabelStore(labels).labeled() == {paths[0], paths[2]}
    assert one.state()["labeled"] == 2 and two.state()["labeled"] == 2


def test_a_busy_port_and_a_wrong_table_are_one_line(suggested, tmp_path, page):
    port = page[0]
    with pytest.raises(UserError, match=rf"--port {port}: in use \(another s5cl label\?\)"):
        serve(page[2], port)
    with pytest.raises(UserError, match=r"--port 70000: a port is 0\.\.65535"):
        serve(page[2], 70000)
    table = tmp_path / "wrong.csv"
    table.write_text("image,class\na.png,3\n")
    with pytest.raises(UserError, match=r"wrong.csv: no column path, rank, row \(not the"):
        open_session(table, tmp_path / "labels.csv", suggested / "data/packed/digits")
    table.write_text("rank,path,row\n1,a.png,x\n")
    with pytest.raises(UserError, match="a rank or row that is not a number"):
        open_session(table, tmp_path / "labels.csv", suggested / "data/packed/digits")


def test_csv_cells_a_spreadsheet_would_run_are_neutralised_and_read_back(tmp_path):
    """OWASP's rule: a text cell starting with = + - @ tab or CR gets a quote; the project reads
    every cell back as it was (numbers are never quoted)."""
    from s5cl.io import read_csv, write_csv

    cells = ["=1+2", "+SUM(A1)", "-2+3", "@cmd", "\tx", "'quoted", "'=both", "plain", "a=b"]
    frame = pd.DataFrame({"text": cells, "number": np.arange(len(cells)) - 3.5})
    write_csv(frame, tmp_path / "t.csv")
    raw = pd.read_csv(tmp_path / "t.csv", dtype=str)["text"].tolist()
    assert [cell[0] for cell in raw[:7]] == ["'"] * 7 and raw[7:] == ["plain", "a=b"]
    back = read_csv(tmp_path / "t.csv")
    assert back["text"].tolist() == cells and back["number"].tolist() == frame["number"].tolist()
