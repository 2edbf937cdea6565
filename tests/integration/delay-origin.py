#!/usr/bin/env python3
"""delay-origin.py DOCROOT PORT DELAY_MS LOG: an HTTP origin on 127.0.0.1
that answers Range GETs of the files in DOCROOT after DELAY_MS (one round
trip to a distant origin), one thread per connection, keep-alive.  Each
request is appended to LOG as "START END FILE FIRST LAST" (monotonic
seconds when it came and when its answer was sent, the byte range).

rounds.py LOG [FILE] then counts the round trips a reader waited for: the
longest chain of requests each of which came after the one before it was
answered (a reader that asks one chunk after the other makes a chain as
long as its requests; one that asks ahead makes them overlap)."""
import http.server
import os
import re
import sys
import threading
import time

docroot, port, delay, log_path = (sys.argv[1], int(sys.argv[2]),
                                   float(sys.argv[3]) / 1000, sys.argv[4])
log_lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        start = time.monotonic()
        name = os.path.basename(self.path)
        path = os.path.join(docroot, name)
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if not os.path.isfile(path) or not m:
            self.send_error(404 if not os.path.isfile(path) else 416)
            return
        size = os.path.getsize(path)
        first, last = int(m.group(1)), min(int(m.group(2)), size - 1)
        with open(path, "rb") as f:
            f.seek(first)
            body = f.read(last - first + 1)
        time.sleep(delay)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        with log_lock, open(log_path, "a") as log:
            log.write(f"{start:.6f} {time.monotonic():.6f} {name} {first} {last}\n")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


Server(("127.0.0.1", port), Handler).serve_forever()
