"""The data manager against a real HTTP server on loopback: downloads land whole and checked,
a wrong checksum is a clear error that leaves nothing behind, generated files are reused only
while they match their checksum."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import time

from mlscope.manifests import AssetCache, AssetError, DownloadLimits, ModelSources
from mlscope.manifests import trust

PAYLOAD = b"model bytes " * 1000
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path == "/drip.onnx":  # a byte every 0.2 s, for ever
            self.send_response(200)
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                return
        if self.path != "/model.onnx":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.requests = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _files(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file())


def test_download_is_cached_and_verified(server: str, tmp_path: Path) -> None:
    cache = AssetCache(tmp_path)
    path = cache.fetch(f"{server}/model.onnx", SHA)
    assert path.read_bytes() == PAYLOAD
    assert cache.fetch(f"{server}/model.onnx", SHA) == path
    assert _Handler.requests == ["/model.onnx"]  # the second fetch came from the cache
    path.write_bytes(b"tampered")
    assert cache.fetch(f"{server}/model.onnx", SHA).read_bytes() == PAYLOAD  # fetched again
    assert len(_Handler.requests) == 2


def test_checksum_mismatch_is_an_error_and_leaves_nothing(server: str, tmp_path: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(AssetError, match=f"model.onnx: sha256 mismatch: expected {wrong}, got {SHA}"):
        AssetCache(tmp_path).fetch(f"{server}/model.onnx", wrong)
    assert _files(tmp_path) == []


def test_http_errors_and_missing_paths_are_clear(server: str, tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="HTTP 404"):
        AssetCache(tmp_path).fetch(f"{server}/absent.onnx", SHA)
    with pytest.raises(AssetError, match="cannot read"):
        AssetCache(tmp_path).fetch(str(tmp_path / "absent.onnx"), SHA)
    assert _files(tmp_path) == []


def test_a_local_path_is_copied_in(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(PAYLOAD)
    cached = AssetCache(tmp_path / "cache").fetch(str(source), SHA)
    assert cached.read_bytes() == PAYLOAD and cached.parent.name == SHA


def test_generated_files_are_reused_while_they_match(tmp_path: Path) -> None:
    cache = AssetCache(tmp_path)
    made: list[int] = []

    def produce(path: Path) -> None:
        made.append(1)
        path.write_bytes(PAYLOAD)

    path, digest = cache.generated("models/m/weights.pt", produce)
    assert (digest, path.read_bytes(), len(made)) == (SHA, PAYLOAD, 1)
    assert cache.generated("models/m/weights.pt", produce) == (path, SHA) and len(made) == 1
    path.write_bytes(b"corrupted")
    assert cache.generated("models/m/weights.pt", produce) == (path, SHA) and len(made) == 2
    assert _files(tmp_path) == ["models/m/weights.pt", "models/m/weights.pt.sha256"]


def test_a_failed_producer_leaves_nothing(tmp_path: Path) -> None:
    def produce(path: Path) -> None:
        path.write_bytes(b"half")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError):
        AssetCache(tmp_path).generated("models/m/model.onnx", produce)
    assert _files(tmp_path) == []


def _parts(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if path.name.endswith(".part")]


def test_a_download_stops_at_the_declared_size_or_the_cap(server: str, tmp_path: Path) -> None:
    with pytest.raises(AssetError, match=f"model.onnx: larger than {len(PAYLOAD) - 1} bytes"):
        AssetCache(tmp_path).fetch(f"{server}/model.onnx", SHA, size=len(PAYLOAD) - 1)
    with pytest.raises(AssetError, match="model.onnx: larger than 1000 bytes"):
        AssetCache(tmp_path, limits=DownloadLimits(max_bytes=1000)).fetch(f"{server}/model.onnx", SHA)
    with pytest.raises(AssetError, match=f"{len(PAYLOAD)} bytes, not its declared {len(PAYLOAD) + 1}"):
        AssetCache(tmp_path).fetch(f"{server}/model.onnx", SHA, size=len(PAYLOAD) + 1)
    assert _files(tmp_path) == [] and AssetCache(tmp_path).fetch(f"{server}/model.onnx", SHA, size=len(PAYLOAD))


def test_a_slow_drip_stops_at_the_deadline_and_leaves_nothing(server: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(AssetError, match=r"drip.onnx: not fetched within 1 s \(\d+ bytes so far\)"):
        AssetCache(tmp_path, limits=DownloadLimits(deadline_s=1.0)).fetch(f"{server}/drip.onnx", SHA)
    assert time.monotonic() - started < 2.5
    assert _parts(tmp_path) == [] and _files(tmp_path) == []


def test_a_remote_jobs_cache_refuses_paths_and_private_addresses(server: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    remote = AssetCache(tmp_path / "cache", sources=ModelSources.remote())
    secret = tmp_path / "secret"
    secret.write_bytes(PAYLOAD)
    with pytest.raises(AssetError, match="a model path is not allowed .*--allow-path"):
        remote.fetch(str(secret), SHA)
    with pytest.raises(AssetError, match=r"127.0.0.1 is a private, loopback or reserved address \(127.0.0.1\)"):
        remote.fetch(f"{server}/model.onnx", SHA)
    # A name that resolves to a public address, then connects to loopback (rebinding): the
    # address the connection reached is checked too.
    monkeypatch.setattr(trust, "resolved_addresses", lambda host: ["93.184.216.34"])
    with pytest.raises(AssetError, match="private, loopback or reserved address"):
        remote.fetch(f"{server}/model.onnx", SHA)
    assert _Handler.requests == [] and _files(tmp_path / "cache") == []
    allowed = AssetCache(tmp_path / "cache", sources=ModelSources.remote(paths=True, private_urls=True))
    assert allowed.fetch(f"{server}/model.onnx", SHA).read_bytes() == PAYLOAD
    assert allowed.fetch(str(secret), SHA).read_bytes() == PAYLOAD


def test_error_messages_are_bounded(tmp_path: Path) -> None:
    with pytest.raises(AssetError) as caught:
        AssetCache(tmp_path).fetch(str(tmp_path / ("x" * 5000)), SHA)
    assert len(str(caught.value)) < 600
