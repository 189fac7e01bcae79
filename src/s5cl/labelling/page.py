"""`s5cl label`: a small local web page to label the suggested images, one at a time.

It serves suggest/to_label.csv's images on 127.0.0.1 (nothing leaves the machine): keys 1-9 or
a button per class answer, `s` skips, `u` (or Backspace) undoes the last answer. Each answer is
written at once to labels/labels.csv (path, label, time), the whole file replaced atomically,
so stopping the page (Ctrl-C, a crash, a power cut) loses no answer given, and starting it
again continues with the first image not labeled yet. `split.labeled_csv: labels/labels.csv`
then trains with them on the next `dvc repro`.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hmac
import io
import json
import secrets
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from s5cl import layout
from s5cl.data.packed import PackedDataset
from s5cl.errors import UserError
from s5cl.io import atomic_path, first_line, read_csv, read_input, write_csv

LABELS_CSV = layout.LABELS_CSV
SHOWN = 384  # pixels: the shorter side of an image is shown at least this large


class LabelStore:
    """The answers in `path` (CSV: path, label, time), in the order given. Several pages may
    answer into one file (two people, or a page started twice): every change takes an
    exclusive lock (`.<name>.lock` beside it), reads the file as it is now, applies the change
    and writes the file whole through a temporary file and a rename, so it is always complete
    and no session's answers are lost. `undo` forgets this session's own last answer."""

    COLUMNS = ("path", "label", "time")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mine: list[str] = []  # the paths this session answered, in order (for undo)
        self.rows()  # a foreign file is an error now, not at the first answer

    def rows(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        frame = read_input(self.path, lambda p: read_csv(p, dtype=str), "labels table")
        if list(frame.columns[:2]) != ["path", "label"]:
            raise UserError(f"{self.path}: columns {list(frame.columns)}; expected path,label,time")
        return frame.fillna("").to_dict("records")

    def labeled(self) -> set[str]:
        return {row["path"] for row in self.rows()}

    @contextmanager
    def _locked(self) -> Iterator[list[dict[str, str]]]:
        """The rows as they are on disk, under the lock; written back when the block ends."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / f".{self.path.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                rows = self.rows()
                yield rows
                with atomic_path(self.path) as tmp:
                    write_csv(pd.DataFrame(rows, columns=list(self.COLUMNS)), tmp)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def answer(self, path: str, label: str) -> None:
        """Label `path` (again: a new answer replaces an earlier one)."""
        with self._locked() as rows:
            rows[:] = [row for row in rows if row["path"] != path]
            rows.append({"path": path, "label": label, "time": datetime.now(UTC).isoformat()})
        self.mine.append(path)

    def undo(self) -> str | None:
        """Forget this session's last answer still in the file; return its path (None:
        nothing to undo)."""
        with self._locked() as rows:
            present = {row["path"] for row in rows}
            while self.mine and self.mine[-1] not in present:
                self.mine.pop()  # answered again elsewhere and removed: nothing of ours
            if not self.mine:
                return None
            path = self.mine.pop()
            rows[:] = [row for row in rows if row["path"] != path]
        return path


class Session:
    """What the page shows: the suggested images in rank order, those answered (the store),
    those skipped in this session (shown again after a restart)."""

    def __init__(
        self, queue: pd.DataFrame, images: np.ndarray, classes: list[str], store: LabelStore
    ):
        self.queue, self.images, self.classes, self.store = queue, images, classes, store
        self.skipped: set[str] = set()
        self.lock = threading.Lock()

    def current(self) -> pd.Series | None:
        done = self.store.labeled() | self.skipped
        for _, row in self.queue.iterrows():
            if row["path"] not in done:
                return row
        return None

    def state(self) -> dict[str, Any]:
        row = self.current()
        paths = set(self.queue["path"])
        shown = None
        if row is not None:
            shown = {
                "rank": int(row["rank"]),
                "path": row["path"],
                "prediction": row.get("prediction", ""),
                "confidence": float(row.get("confidence", np.nan)),
                "image": f"/image/{int(row['rank'])}",
                "packed": "#" in str(row["path"]),  # no file of its own: shown pixel for pixel
            }
        return {
            "classes": self.classes,
            "current": shown,
            "labeled": len(self.store.labeled() & paths),
            "skipped": len(self.skipped),
            "total": len(self.queue),
            "labels_csv": str(self.store.path),
        }

    def act(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if action == "answer":
                if body.get("label") not in self.classes:
                    raise UserError(f"unknown class {body.get('label')!r}")
                if body.get("path") not in set(self.queue["path"]):
                    raise UserError(f"{body.get('path')!r} is not a suggested image")
                self.store.answer(body["path"], body["label"])
            elif action == "skip":
                if body.get("path") not in set(self.queue["path"]):
                    raise UserError(f"{body.get('path')!r} is not a suggested image")
                self.skipped.add(body["path"])
            elif action == "undo":
                path = self.store.undo()
                if path is None and self.skipped:  # nothing answered: bring back a skipped one
                    self.skipped.clear()
            else:
                raise UserError(f"unknown action {action!r}")
            return self.state()

    def png(self, rank: int) -> bytes:
        rows = self.queue.index[self.queue["rank"] == rank]
        if len(rows) == 0:
            raise KeyError(rank)
        row = self.queue.loc[rows[0]]
        buffer = io.BytesIO()
        original_image(str(row["path"]), self.images[int(row["row"])]).save(buffer, format="PNG")
        return buffer.getvalue()


def original_image(path: str, packed: np.ndarray) -> Image.Image:
    """The image as a person should judge it: its source file at its own resolution (upscaled
    smoothly to at least SHOWN pixels a side when smaller), turned as viewers show it. An image
    that has no file of its own (a row of an array dataset: `file.npz#member:row`), or whose
    file is gone, is the packed copy enlarged pixel for pixel."""
    image = None
    if "#" not in path:
        try:
            with Image.open(path) as opened:
                image = ImageOps.exif_transpose(opened).convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):
            image = None
    if image is None:
        return Image.fromarray(np.asarray(packed)).resize((SHOWN, SHOWN), Image.NEAREST)
    scale = SHOWN / min(image.size)
    if scale > 1:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>s5cl label</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
 #image { max-width: 95vw; max-height: 80vh; border: 1px solid #999; }
 #image.packed { image-rendering: pixelated; }
 #classes button { margin: 0.25em; padding: 0.5em 0.9em; font-size: 1em; }
 #progress { margin: 0.5em 0; font-weight: bold; }
 .hint { color: #666; font-size: 0.9em; }
 kbd { font-size: 0.75em; color: #666; border: 1px solid #aaa; border-radius: 3px;
       padding: 0 0.3em; }
</style></head>
<body>
<h2>Label the suggested images</h2>
<div id="progress"></div>
<div id="work">
 <img id="image" alt="the image to label">
 <div class="hint"><span id="meta"></span> · <span id="size"></span>
  (browser zoom: Ctrl +/−)</div>
 <div id="classes"></div>
 <button id="skip">skip (s)</button> <button id="undo">undo (u)</button>
</div>
<div id="finished" hidden>All suggested images are labeled.
 <button id="undo2">undo (u)</button></div>
<p class="hint">Keys: 1-9 choose a class, s skips, u or Backspace undoes.
Every answer is saved at once to <code id="csv"></code>.</p>
<script>
const TOKEN = "__TOKEN__";  // this session's; the server answers no request without it
let state = null;
async function call(url, body) {
  const headers = {"X-S5CL-Token": TOKEN};
  const response = await fetch(url, body === undefined ? {headers: headers} : {method: "POST",
    headers: {...headers, "Content-Type": "application/json"}, body: JSON.stringify(body)});
  const answer = await response.json();
  if (!response.ok) { alert(answer.error); return; }
  state = answer; show();
}
function show() {
  document.getElementById("csv").textContent = state.labels_csv;
  document.getElementById("progress").textContent =
    `${state.labeled} of ${state.total} labeled, ${state.skipped} skipped`;
  const c = state.current;
  document.getElementById("work").hidden = c === null;
  document.getElementById("finished").hidden = c !== null;
  if (c === null) return;
  document.getElementById("image").src = `${c.image}?token=${TOKEN}`;
  document.getElementById("image").dataset.path = c.path;
  const img = document.getElementById("image");
  img.className = c.packed ? "packed" : "";
  img.onload = () => {
    document.getElementById("size").textContent = `${img.naturalWidth}×${img.naturalHeight} px`;
  };
  document.getElementById("meta").textContent =
    `#${c.rank} (model: ${c.prediction}, ${(100 * c.confidence).toFixed(0)}%)`;
  const box = document.getElementById("classes");
  if (box.childElementCount !== state.classes.length) {
    box.replaceChildren(...state.classes.map((name, i) => {
      const b = document.createElement("button");
      if (i < 9) {
        const key = document.createElement("kbd");
        key.textContent = i + 1;
        b.append(key, " ");
      }
      b.append(name);
      b.dataset.label = name;
      b.onclick = () => answer(name);
      return b;
    }));
  }
}
const answer = (label) => call("/api/answer", {path: state.current.path, label: label});
const skip = () => call("/api/skip", {path: state.current.path});
const undo = () => call("/api/undo", {});
document.getElementById("skip").onclick = skip;
document.getElementById("undo").onclick = undo;
document.getElementById("undo2").onclick = undo;
document.addEventListener("keydown", (e) => {
  if (state === null) return;
  if (e.key === "u" || e.key === "Backspace") { e.preventDefault(); undo(); return; }
  if (state.current === null) return;
  const i = parseInt(e.key, 10);
  if (i >= 1 && i <= Math.min(9, state.classes.length)) answer(state.classes[i - 1]);
  else if (e.key === "s") skip();
});
call("/api/state");
</script></body></html>
"""


MAX_BODY = 64 * 1024  # bytes: an answer is a path and a class name


class Refused(Exception):
    """A request the page never makes: answered with `status` and one line, nothing done."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def handler(session: Session, token: str) -> type[BaseHTTPRequestHandler]:
    """Requests for `session`'s page. Only the page itself is answered: the Host must be this
    server (no DNS rebinding), an Origin, when sent, this server's (no other site's page), and
    every call but the page carry `token` (which only the page holds); a POST must be a JSON
    object of at most MAX_BODY bytes. Anything else is a clean 4xx, never a traceback."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: dict[str, Any]) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def _check_origin(self) -> None:
            port = self.server.server_address[1]
            hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
            if self.headers.get("Host") not in hosts:
                raise Refused(403, "this server answers only its own page (Host)")
            origin = self.headers.get("Origin")
            if origin is not None and origin not in {f"http://{host}" for host in hosts}:
                raise Refused(403, "this server answers only its own page (Origin)")

        def _check_token(self, given: str | None) -> None:
            if not hmac.compare_digest((given or "").encode(), token.encode()):
                raise Refused(403, "missing or wrong session token")

        def _body(self) -> dict[str, Any]:
            kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if kind != "application/json":
                raise Refused(415, "the body must be JSON (Content-Type: application/json)")
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise Refused(400, f"Content-Length {length!r}: expected a byte count")
            if int(length) > MAX_BODY:
                raise Refused(413, f"body of {int(length):,} bytes; at most {MAX_BODY:,}")
            try:
                body = json.loads(self.rfile.read(int(length)).decode("utf-8") or "{}")
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise Refused(400, f"the body is not JSON ({first_line(error)})") from None
            if not isinstance(body, dict) or not all(isinstance(v, str) for v in body.values()):
                raise Refused(400, "the body must be a JSON object of strings")
            return body

        def _answer(self, work: Callable[[], None]) -> None:
            try:
                work()
            except Refused as refused:
                self._json(refused.status, {"error": str(refused)})
            except UserError as error:
                self._json(400, {"error": str(error)})
            except Exception as error:  # a bug: one line in the terminal, a 500 to the page
                print(f"s5cl label: {self.command} {self.path}: {first_line(error)}",
                      file=sys.stderr)  # fmt: skip
                self._json(500, {"error": first_line(error)})

        def do_GET(self) -> None:
            def work() -> None:
                self._check_origin()
                url = urlsplit(self.path)
                if url.path == "/":
                    self._send(200, PAGE.replace("__TOKEN__", token).encode(),
                               "text/html; charset=utf-8")  # fmt: skip
                    return
                if url.path == "/api/state":
                    self._check_token(self.headers.get("X-S5CL-Token"))
                    with session.lock:
                        self._json(200, session.state())
                elif url.path.startswith("/image/"):
                    self._check_token(parse_qs(url.query).get("token", [None])[0])
                    rank = url.path.removeprefix("/image/")
                    try:
                        self._send(200, session.png(int(rank)), "image/png")
                    except (KeyError, ValueError):
                        raise Refused(404, f"no image {rank!r}") from None
                else:
                    raise Refused(404, f"no page {url.path}")

            self._answer(work)

        def do_POST(self) -> None:
            def work() -> None:
                self._check_origin()
                if not self.path.startswith("/api/"):
                    raise Refused(404, f"no page {self.path}")
                self._check_token(self.headers.get("X-S5CL-Token"))
                body = self._body()
                self._json(200, session.act(self.path.removeprefix("/api/"), body))

            self._answer(work)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: answers are the log
            return None

    return Handler


def open_session(suggestions: Path, labels: Path, packed: Path) -> Session:
    """The session for the suggest stage's table `suggestions`, the answers in `labels`, the
    images of the packed dataset in `packed`."""
    queue = read_input(suggestions, read_csv, "suggestions table")
    missing = {"rank", "path", "row"} - set(queue.columns)
    if missing:
        raise UserError(
            f"{suggestions}: no column {', '.join(sorted(missing))} (not the suggest stage's "
            "to_label.csv?); rerun suggest (s5cl suggest)"
        )
    data = PackedDataset.open(packed)
    rows = pd.to_numeric(queue["row"], errors="coerce")
    ranks = pd.to_numeric(queue["rank"], errors="coerce")
    if queue.empty or rows.isna().any() or ranks.isna().any() or rows.min() < 0:
        raise UserError(f"{suggestions}: no rows, or a rank or row that is not a number; rerun "
                        "suggest (s5cl suggest)")  # fmt: skip
    if rows.max() >= len(data.images):
        raise UserError(f"{suggestions}: made for another dataset than {packed}; rerun suggest")
    queue = queue.assign(
        row=rows.astype(int), rank=ranks.astype(int), path=queue["path"].astype(str)
    )
    return Session(
        queue.sort_values("rank").reset_index(drop=True), data.images, data.class_names,
        LabelStore(labels),
    )  # fmt: skip


def serve(session: Session, port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server for `session` on 127.0.0.1:`port` (0: any free port), not yet started,
    with a new session token. A port in use or out of range is one line."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: a port is 0..65535 (0: any free port)")
    try:
        return ThreadingHTTPServer(("127.0.0.1", port), handler(session, secrets.token_urlsafe(24)))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise UserError(
                f"--port {port}: in use (another s5cl label?); stop it, or give --port 0 for "
                "any free port"
            ) from None
        raise UserError(f"--port {port}: cannot listen there ({error.strerror})") from None


def label_command(args: argparse.Namespace) -> None:
    from s5cl.config.params import load_params

    params = load_params(args.params, [])
    session = open_session(args.suggestions, args.labels, layout.packed_dir(params.data.name))
    server = serve(session, args.port)
    state = session.state()
    print(
        f"s5cl label: {state['labeled']} of {state['total']} labeled so far; open "
        f"http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops; answers are saved to "
        f"{args.labels} as given)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
