"""A stand-in for ``python -m llama_cpp.server`` in the launcher's tests: the same options, no model.

Put ``tests/fakes`` first on ``PYTHONPATH`` and the launcher starts this instead of llama.cpp. It prints
its arguments, binds ``--port`` as uvicorn does (SO_REUSEADDR; "address already in use" and exit 1
when taken) on 127.0.0.1 whatever ``--host`` says (tests reach nothing beyond loopback), and answers
``GET /v1/models`` with ``--model_alias``, asking for ``--api_key`` as a bearer token (401 without it).
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
for option in ("--host", "--model_alias", "--api_key"):
    parser.add_argument(option)
parser.add_argument("--port", type=int)
args, _ = parser.parse_known_args()
print("fake llama_cpp.server", *sys.argv[1:], flush=True)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if args.api_key and self.headers.get("Authorization") != f"Bearer {args.api_key}":
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps({"object": "list", "data": [{"id": args.model_alias, "object": "model"}]}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


try:
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
except OSError as exc:
    print(f"ERROR: [Errno {exc.errno}] error while attempting to bind on address: {exc.strerror.lower()}",
          flush=True)
    sys.exit(1)
server.serve_forever()
