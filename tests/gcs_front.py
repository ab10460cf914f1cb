#!/usr/bin/env python3
"""A Google Cloud Storage front for an S3-compatible server, for the tests of `gs://` lakes.

No GCS emulator installs from the registries these tests may use (fake-gcs-server is a Go binary;
gcp-storage-emulator answers 501 to the XML API's listing and ignores conditional writes). `object_store`'s
GCS client speaks only the XML API, which is S3's protocol with Google's names for a few headers. So this
front takes the client's requests, renames those headers and passes them to a real store (SeaweedFS, as the
S3 tests use). What the store decides (a taken name, a missing object, a multipart upload) comes back with
its status, which is what the client acts on; the rest of the answer is S3's (XML errors, `x-amz-*` headers,
no `x-goog-generation`). The objects are then in the S3 bucket of the same name, where the tests read them
back.

    python3 tests/gcs_front.py --upstream http://127.0.0.1:8333 --port 4443

The client reaches it through a service-account key with `"gcs_base_url": "http://127.0.0.1:4443"` and
`"disable_oauth": true` (`object_store`'s way to talk to a local GCS).
"""

import argparse
import http.client
import http.server
import socketserver
import urllib.parse

# Request headers that GCS names its own way, and their S3 names.
RENAMED = {
    "x-goog-copy-source": "x-amz-copy-source",
    "x-goog-storage-class": "x-amz-storage-class",
}
# Hop-by-hop headers, and those the front sets itself.
DROPPED = {"host", "connection", "authorization", "transfer-encoding", "content-length", "keep-alive"}


class Front(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream = None  # (host, port), set in main

    def log_message(self, fmt, *args):  # quiet: the tests read the store's answers, not a log
        pass

    def refuse(self, status, why):
        data = why.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def forward(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # `object_store` always says how long a body is; a chunked one would be left unread here.
            self.close_connection = True
            return self.refuse(411, "this front takes bodies with a Content-Length only")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {}
        for name, value in self.headers.items():
            lower = name.lower()
            if lower in DROPPED:
                continue
            if lower == "x-goog-if-generation-match":
                # Generation 0: "only if no live object has this name" (a create). Other generations are
                # versions this front does not keep; the client sends them only for `PutMode::Update`.
                if value.strip() != "0":
                    return self.refuse(501, "this front keeps no generations: only creates are conditional")
                headers["If-None-Match"] = "*"
                continue
            if lower.startswith("x-goog-meta-"):
                headers["x-amz-meta-" + lower[len("x-goog-meta-"):]] = value
                continue
            headers[RENAMED.get(lower, name)] = value
        if "x-amz-copy-source" in headers:
            headers["x-amz-copy-source"] = "/" + headers["x-amz-copy-source"].lstrip("/")
        headers["Content-Length"] = str(len(body))
        try:
            connection = http.client.HTTPConnection(*self.upstream, timeout=60)
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            status, reason, answer = response.status, response.reason, response.getheaders()
            connection.close()
        except (OSError, http.client.HTTPException) as e:
            # The store is away: as a front that cannot reach its backend would answer.
            status, reason, answer, data = 503, "Service Unavailable", [], str(e).encode()
        self.send_response(status, reason)
        length = str(len(data))
        for name, value in answer:
            lower = name.lower()
            if lower == "content-length" and self.command == "HEAD":
                length = value  # the object's size, which a HEAD answers with
            elif lower not in DROPPED and lower not in ("server", "date"):
                self.send_header(name, value)
        # A copy's 200 is all the GCS client reads of it; a create refused is 412 in both protocols.
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = forward


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the S3-compatible server, http://host:port")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    upstream = urllib.parse.urlsplit(args.upstream)
    Front.upstream = (upstream.hostname, upstream.port or 80)
    Server(("127.0.0.1", args.port), Front).serve_forever()


if __name__ == "__main__":
    main()
