"""A loopback HTTPS proxy that lets TensorFlow's own GCS client talk to a GCS emulator.

TensorFlow's GCS filesystem (tf.io.gfile, TFRecordDataset, TFRecordWriter) always calls
https://www.googleapis.com and https://storage.googleapis.com; it ignores
STORAGE_EMULATOR_HOST. Its libcurl does honour HTTPS_PROXY and CURL_CA_BUNDLE, so with
HTTPS_PROXY pointing here and CURL_CA_BUNDLE at a throwaway CA, every request it makes
lands on this proxy, which answers the CONNECT itself, terminates TLS with a certificate
of that CA, and forwards each request as plain HTTP to the emulator (same path and
query; `storage.googleapis.com/BUCKET/OBJECT` is the emulator's `/BUCKET/OBJECT` route).
The emulator names itself in the resumable-upload session URL (Location); the proxy
rewrites that back to www.googleapis.com so that the upload's data also comes through it.
Nothing leaves the machine: no request is ever sent to the host named in the CONNECT.
Plain HTTP requests (not CONNECT) are forwarded the same way: tensorstore (Orbax's array
data) uses the proxy as its GCS endpoint (TENSORSTORE_GCS_HTTP_URL), because it reads
an object's generation from the `x-goog-generation` header of a download, which the
emulator does not send and the proxy adds from the object's metadata.

The emulator (a single-threaded http.server) does not understand chunked request bodies
nor `Expect: 100-continue`, both of which libcurl sends on uploads; the proxy answers the
100 itself, reads the whole body (de-chunking it) and forwards it with a Content-Length.
It also crashes on an empty media upload, which the proxy sends as a multipart upload,
and lacks the bucket's storageLayout (asked before renames), which the proxy answers
itself: a bucket without hierarchical namespace, as a default GCS bucket is.
The emulator ignores generation preconditions (`ifGenerationMatch`, which a run's lock
object relies on: created only if absent, renewed only if unchanged); the proxy checks
them against the object's generation and answers 412 as GCS does, one conditional
request at a time, so that a check and the write it guards are atomic among them.
Google's Python client (STORAGE_EMULATOR_HOST) comes through the proxy for this.

Two switches let tests play a bucket's bad days (POST the value to the path on the
proxy): `/_proxy/quota` (a prefix: every upload under it is refused with GCS's 403
'quota exceeded'; empty lifts it) and `/_proxy/read_delay` (seconds each object read
waits before it is answered, as on a real bucket far away; 0 lifts it).

Run as `python gcs_proxy.py --port P --emulator-port E --cert C --key K`; it prints
`ready` once listening, logs each request and its status to stderr, and serves until
killed.
"""

import argparse
import http.client
import json
import re
import socketserver
import ssl
import sys
import threading
import time
import urllib.parse

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect",
               "te", "trailer", "upgrade", "content-length", "host"}
_BOUNDARY = "tadax-gcs-proxy-boundary"


def _read_headers(stream) -> tuple[str, list[tuple[str, str]]]:
    """The request line and the header list of the next request, ('', []) at EOF."""
    line = stream.readline()
    while line in (b"\r\n", b"\n"):
        line = stream.readline()
    if not line:
        return "", []
    headers = []
    while True:
        h = stream.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return line.decode("latin-1").strip(), headers


def _read_body(stream, headers) -> bytes:
    """The request body: de-chunked when chunked (which wins over Content-Length)."""
    lower = {k.lower(): v for k, v in headers}
    if "chunked" in lower.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int(stream.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while stream.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(stream.read(size))
            stream.readline()
    return stream.read(int(lower.get("content-length", "0")))


def _as_multipart(target: str) -> tuple[str, bytes, str]:
    """An empty media upload as the equivalent multipart upload (request target, body,
    content type): the emulator crashes on an empty media body (TF's makedirs sends one
    for every `dir/` marker object)."""
    url = urllib.parse.urlsplit(target)
    query = urllib.parse.parse_qs(url.query)
    query["uploadType"] = ["multipart"]
    meta = json.dumps({"name": query["name"][0]})
    body = (f"--{_BOUNDARY}\r\nContent-Type: application/json\r\n\r\n{meta}\r\n"
            f"--{_BOUNDARY}\r\nContent-Type: application/octet-stream\r\n\r\n\r\n"
            f"--{_BOUNDARY}--\r\n").encode()
    target = url._replace(query=urllib.parse.urlencode(query, doseq=True)).geturl()
    return target, body, f"multipart/related; boundary={_BOUNDARY}"


def _reply(wfile, status: int, reason: str, payload: bytes, content_type: str) -> bool:
    wfile.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n".encode("latin-1") + payload)
    wfile.flush()
    return True


_MEDIA = re.compile(r"/(?:download/)?storage/v1/b/([^/?]+)/o/([^/?]+)\?(?:.*&)?alt=media(?:&.*)?")
_OBJECT = re.compile(r"/(?:download/)?storage/v1/b/([^/?]+)/o/([^/?]+)(?:\?.*)?")
_UPLOAD = re.compile(r"/upload/storage/v1/b/([^/?]+)/o(?:\?.*)?")


def _upload_name(target: str, body: bytes):
    """The object name of an upload request (query `name`, or a multipart upload's JSON
    part); None for any other request."""
    if not _UPLOAD.fullmatch(target):
        return None
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
    if "name" in query:
        return query["name"][0]
    meta = re.search(rb"\r\n\r\n(\{.*?\})\r\n--", body, re.S)
    return json.loads(meta.group(1)).get("name") if meta else None


def _over_quota(method: str, target: str, body: bytes, prefix: str) -> bool:
    """Whether an upload writes under `prefix`, which the tests declared over quota."""
    name = _upload_name(target, body) if method == "POST" else None
    return bool(name) and name.startswith(prefix)


def _conditional_object(method: str, target: str, body: bytes):
    """(bucket, object name, expected generation) of a request with `ifGenerationMatch`,
    else None."""
    url = urllib.parse.urlsplit(target)
    query = urllib.parse.parse_qs(url.query)
    if "ifGenerationMatch" not in query:
        return None
    expected = query["ifGenerationMatch"][0]
    upload = _UPLOAD.fullmatch(target)
    if method == "POST" and upload:
        name = _upload_name(target, body)
        return (upload.group(1), name, expected) if name else None
    match = _OBJECT.fullmatch(target)
    if match:
        return match.group(1), urllib.parse.unquote(match.group(2)), expected
    return None


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        request_line, headers = _read_headers(self.rfile)
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.emulator_port, timeout=60)
        if request_line.startswith("CONNECT "):
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.wfile.flush()
            tls = self.server.tls.wrap_socket(self.connection, server_side=True)
            rfile, wfile = tls.makefile("rb"), tls.makefile("wb")
            request_line, headers = _read_headers(rfile)
        else:   # a plain HTTP client (tensorstore) using the proxy as its GCS endpoint
            rfile, wfile = self.rfile, self.wfile
        while request_line and self._forward(request_line, headers, rfile, wfile, upstream):
            request_line, headers = _read_headers(rfile)
        upstream.close()

    def _send(self, upstream, method, target, body, headers):
        try:
            upstream.request(method, target, body=body, headers=headers)
            response = upstream.getresponse()
            return response, response.read()
        except (http.client.HTTPException, OSError):
            upstream.close()
            upstream.request(method, target, body=body, headers=headers)
            response = upstream.getresponse()
            return response, response.read()

    def _forward(self, request_line, headers, rfile, wfile, upstream) -> bool:
        method, target, _ = request_line.split(" ", 2)
        if any(k.lower() == "expect" and "100" in v for k, v in headers):
            wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            wfile.flush()
        body = _read_body(rfile, headers)
        if target == "/_proxy/quota":   # the tests' switches: see `_over_quota`
            self.server.quota_prefix = body.decode()
            return _reply(wfile, 200, "OK", b"{}", "application/json")
        if target == "/_proxy/read_delay":   # seconds before each object read is answered
            self.server.read_delay = float(body or 0)
            return _reply(wfile, 200, "OK", b"{}", "application/json")
        if self.server.read_delay and method == "GET" and _MEDIA.fullmatch(target):
            time.sleep(self.server.read_delay)
        if self.server.quota_prefix and _over_quota(method, target, body, self.server.quota_prefix):
            print(f"{method} {target} -> 403 (quota)", file=sys.stderr, flush=True)
            return _reply(wfile, 403, "Forbidden", json.dumps({"error": {
                "code": 403, "message": "Quota exceeded for the bucket's storage: the object "
                "was not written.", "errors": [{"reason": "quotaExceeded"}]}}).encode(),
                "application/json")
        layout = re.fullmatch(r"/storage/v1/b/([^/?]+)/storageLayout(\?.*)?", target)
        if layout:
            return _reply(wfile, 200, "OK", json.dumps(
                {"kind": "storage#storageLayout", "bucket": layout.group(1),
                 "location": "US", "locationType": "multi-region",
                 "hierarchicalNamespace": {"enabled": False}}).encode(), "application/json")
        forwarded = {k: v for k, v in headers if k.lower() not in _HOP_BY_HOP}
        if method == "POST" and not body and "uploadType=media" in target:
            target, body, forwarded["Content-Type"] = _as_multipart(target)
        forwarded["Content-Length"] = str(len(body))
        conditional = _conditional_object(method, target, body)
        if conditional is None:
            response, payload = self._send(upstream, method, target, body, forwarded)
        else:
            with self.server.preconditions:
                bucket, name, expected = conditional
                meta, raw = self._send(upstream, "GET", f"/storage/v1/b/{bucket}/o/"
                                       f"{urllib.parse.quote(name, safe='')}", b"",
                                       {"Content-Length": "0"})
                generation = json.loads(raw)["generation"] if meta.status == 200 else "0"
                if generation != expected:
                    print(f"{method} {target} -> 412 (generation {generation})", file=sys.stderr,
                          flush=True)
                    return _reply(wfile, 412, "Precondition Failed", json.dumps({"error": {
                        "code": 412, "message": "At least one of the pre-conditions you "
                        "specified did not hold.", "errors": [{"reason": "conditionNotMet"}]}}
                    ).encode(), "application/json")
                response, payload = self._send(upstream, method, target, body, forwarded)
        print(f"{method} {target} -> {response.status}", file=sys.stderr, flush=True)
        extra = []
        media = _MEDIA.fullmatch(target)
        if method == "GET" and media and response.status in (200, 206):
            meta, raw = self._send(upstream, "GET", f"/storage/v1/b/{media.group(1)}/o/"
                                   f"{media.group(2)}", b"", {"Content-Length": "0"})
            if meta.status == 200:
                info = json.loads(raw)
                extra = [("x-goog-generation", info["generation"]),
                         ("x-goog-metageneration", info["metageneration"])]
        emulator = f"http://127.0.0.1:{self.server.emulator_port}"
        out = [f"HTTP/1.1 {response.status} {response.reason}\r\n"]
        out += [f"{k}: {v.replace(emulator, 'https://www.googleapis.com')}\r\n"
                for k, v in response.getheaders() + extra if k.lower() not in _HOP_BY_HOP]
        out.append(f"Content-Length: {len(payload)}\r\n\r\n")
        wfile.write("".join(out).encode("latin-1") + (b"" if method == "HEAD" else payload))
        wfile.flush()
        return True


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--emulator-port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    server = _Server(("127.0.0.1", args.port), _Handler)
    server.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.tls.load_cert_chain(args.cert, args.key)
    server.emulator_port = args.emulator_port
    server.preconditions = threading.Lock()
    server.quota_prefix = ""
    server.read_delay = 0.0
    print("ready", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
