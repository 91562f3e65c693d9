#!/usr/bin/env python3
"""The load balancer's part for the container-free topology: round-robin HTTP/1.1 reverse proxy.

    proxy.py LISTEN_PORT BACKEND_PORT [BACKEND_PORT ...]

Forwards each request to the next backend on 127.0.0.1 (skipping one that refuses the connection), streams
request and response bodies, and appends the client's address to X-Forwarded-For, as the ALB does. Standard
library only; for local runs, not for production traffic.
"""

import http.client
import http.server
import itertools
import sys
import threading

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
CHUNK = 64 * 1024


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    backends: itertools.cycle
    lock = threading.Lock()
    count: int

    def log_message(self, format, *args):  # the APIs log requests themselves
        pass

    def forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        previous = self.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{previous}, {self.client_address[0]}" if previous else self.client_address[0]
        for _ in range(self.count):
            with self.lock:
                port = next(self.backends)
            upstream = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            try:
                upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in headers.items():
                    upstream.putheader(key, value)
                upstream.endheaders()
                break
            except ConnectionRefusedError:
                upstream.close()
        else:
            self.send_error(502, "no backend answers")
            return
        remaining = length
        while remaining > 0:
            data = self.rfile.read(min(CHUNK, remaining))
            if not data:
                break
            upstream.send(data)
            remaining -= len(data)
        response = upstream.getresponse()
        self.send_response_only(response.status, response.reason)
        body_length = response.getheader("Content-Length")
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        if body_length is None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        while data := response.read(CHUNK):
            self.wfile.write(data)
        upstream.close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = forward


def main():
    listen, *ports = (int(arg) for arg in sys.argv[1:])
    Proxy.backends = itertools.cycle(ports)
    Proxy.count = len(ports)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", listen), Proxy)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
