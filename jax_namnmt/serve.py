"""``translate --serve PORT``: the model stays loaded behind a small HTTP service on 127.0.0.1
(standard library only). ``POST /`` with UTF-8 text: one translated line back per line of the
body, in order (``text/plain``); ``GET /`` says which model and direction it serves. Requests are
answered one at a time. Only this machine can connect: there is no authentication.

    python -m jax_namnmt.translate --src de --tgt en --serve 8765 &
    curl -s --data-binary $'Zwei Hunde spielen im Schnee.\\nEin Mann fährt Fahrrad.' localhost:8765
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from jax_namnmt.errors import UserError

MAX_BODY = 16 << 20  # bytes of one request


def make_handler(translator):
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, text: str) -> None:
            body = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            self._reply(200, f"jax_namnmt translate {translator.src}-{translator.tgt} "
                             f"({translator.model.directory}): POST lines of text to /\n")

        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self._reply(413, f"error: the body has {length} bytes, at most {MAX_BODY} are taken\n")
            try:
                text = self.rfile.read(length).decode("utf-8")
            except UnicodeDecodeError as e:
                return self._reply(400, f"error: the body is not UTF-8 ({e})\n")
            lines = text.split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            lines = [line[:-1] if line.endswith("\r") else line for line in lines]
            translator.where = "request"
            try:
                outputs = translator.translate(lines)
            except UserError as e:
                return self._reply(400, f"error: {e}\n")
            self._reply(200, "".join(line + "\n" for line in outputs))

        def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
            pass

    return Handler


def serve(translator, port: int) -> int:
    server = HTTPServer(("127.0.0.1", port), make_handler(translator))
    print(f"serving {translator.src}-{translator.tgt} on http://127.0.0.1:{server.server_port}/", file=sys.stderr,
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
