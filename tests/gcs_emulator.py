"""A real GCS server on loopback for tests: gcp-storage-emulator plus gcs_proxy.py.

`running_gcs(folder, bucket)` starts the emulator (in memory, on a free loopback port,
with `bucket` created) and the HTTPS proxy TensorFlow's GCS client needs, and yields the
environment variables under which every GCS client of ours reaches them:

- google-cloud-storage (Orbax asks it for the bucket's layout; a run's lock object):
  STORAGE_EMULATOR_HOST at the proxy (which checks the generation preconditions the
  emulator ignores), no GCE metadata probe (NO_GCE_CHECK).
- tensorstore (Orbax's array data): TENSORSTORE_GCS_HTTP_URL (the proxy, as plain
  HTTP: it adds the generation headers the emulator omits), GOOGLE_AUTH_TOKEN_FOR_TESTING,
  and GCE_METADATA_ROOT / GCE_METADATA_HOST pointed at a closed loopback port so that no
  credential lookup leaves the machine.
- TensorFlow (tf.io.gfile, TFRecordDataset, TFRecordWriter): HTTPS_PROXY to the proxy,
  CURL_CA_BUNDLE to a throwaway CA, GOOGLE_AUTH_TOKEN_FOR_TESTING (no OAuth call).

Both servers are child processes, stopped when the context exits; the proxy logs
the requests of TensorFlow and tensorstore to FOLDER/gcs_proxy.log.
"""

import contextlib
import datetime
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

_PROXY = Path(__file__).with_name("gcs_proxy.py")
_HOSTS = ("www.googleapis.com", "storage.googleapis.com")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_ca_and_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA (ca.pem) and a certificate for the googleapis hosts signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = dict(not_valid_before=now - datetime.timedelta(hours=1),
                 not_valid_after=now + datetime.timedelta(days=1))

    def build(subject, issuer, public_key, signing_key, *extensions):
        builder = x509.CertificateBuilder(subject_name=subject, issuer_name=issuer,
                                          public_key=public_key,
                                          serial_number=x509.random_serial_number(), **valid)
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical=critical)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tadax test CA")])
    ca = build(ca_name, ca_name, ca_key.public_key(), ca_key,
               (x509.BasicConstraints(ca=True, path_length=0), True))
    cert = build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _HOSTS[0])]), ca_name,
                 key.public_key(), ca_key,
                 (x509.SubjectAlternativeName([x509.DNSName(h) for h in _HOSTS]), False),
                 (x509.BasicConstraints(ca=False, path_length=None), True))
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def _wait_for_line(proc: subprocess.Popen, text: str, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if text in line:
            return
        if not line and proc.poll() is not None:
            break
    raise RuntimeError(f"{what} did not start (exit code {proc.poll()})")


def _wait_for_http(url: str, proc: subprocess.Popen, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the GCS emulator exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the GCS emulator did not answer at {url}")


def _stop(proc: subprocess.Popen):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_gcs(folder: Path, bucket: str):
    """Starts the emulator with `bucket` and the proxy; yields the client environment."""
    emulator_port, proxy_port, closed_port = _free_port(), _free_port(), _free_port()
    ca, cert, key = _write_ca_and_certificate(folder)
    procs = []
    try:
        emulator = subprocess.Popen(
            [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
             f"--port={emulator_port}", "--in-memory", f"--default-bucket={bucket}", "--quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder)
        procs.append(emulator)
        _wait_for_http(f"http://127.0.0.1:{emulator_port}/", emulator)
        proxy = subprocess.Popen(
            [sys.executable, str(_PROXY), f"--port={proxy_port}",
             f"--emulator-port={emulator_port}", f"--cert={cert}", f"--key={key}"],
            stdout=subprocess.PIPE, stderr=(folder / "gcs_proxy.log").open("w"), text=True)
        procs.append(proxy)
        _wait_for_line(proxy, "ready", "the GCS proxy")
        yield {
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{proxy_port}",
            "NO_GCE_CHECK": "true",
            "TENSORSTORE_GCS_HTTP_URL": f"http://127.0.0.1:{proxy_port}",
            "GCE_METADATA_ROOT": f"127.0.0.1:{closed_port}",
            "GCE_METADATA_HOST": f"127.0.0.1:{closed_port}",
            "HTTPS_PROXY": f"http://127.0.0.1:{proxy_port}",
            "https_proxy": f"http://127.0.0.1:{proxy_port}",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": str(ca),
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake",
        }
    finally:
        for proc in reversed(procs):
            _stop(proc)
