import http.server
import os
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # gradcheck.py
os.environ.setdefault("MPLBACKEND", "Agg")
# Real MNIST for integration tests: ../shared/datasets beside the repository, unless set already.
_shared = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
if "CNNTRAIN_DATA" not in os.environ and _shared.is_dir():
    os.environ["CNNTRAIN_DATA"] = str(_shared)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        body = self.server.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server():
    """A local HTTP server: set .routes {path: bytes}; .requests lists the paths asked for; .url is its base."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes, httpd.requests = {}, []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    # A short poll interval: shutdown() waits for one, and the default 0.5 s would dominate the test time.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
