"""Download against a local fake of the public bucket (127.0.0.1): resume, Range quirks, size checks, unsafe
archives, ListObjectsV2 paging. Archive layout assumed for the real tarball: ``AOI_3_Paris_Train/RGB-PanSharpen/...``,
``AOI_3_Paris_Train/geojson/buildings/...`` (the original release layout, as users of SN2_buildings_train_AOI_3_Paris
report after ``tar -xf``)."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

import pytest

from bdcore.data import download as dl
from bdcore.cli import main as cli_main
from bdcore.data.catalog import load_catalog
from bdcore.data.demo import write_demo_aoi

PREFIX = "spacenet/SN2_buildings"
FAST = dict(progress=False, retries=3, backoff=0.01, timeout=10)


@dataclass
class FakeBucket:
    objects: dict[str, bytes] = field(default_factory=dict)  # key -> bytes
    cut_once: dict[str, int] = field(default_factory=dict)  # key -> bytes sent before the first response dies
    ignore_range: set[str] = field(default_factory=set)
    no_length: set[str] = field(default_factory=set)  # close-delimited body, no Content-Length
    listed_size: dict[str, int] = field(default_factory=dict)  # key -> size the listing claims (if wrong)
    page_size: int = 2
    log: list[tuple[str, str | None]] = field(default_factory=list)  # (path?query, Range header)
    url: str = ""

    @property
    def base_url(self) -> str:
        return f"{self.url}/{PREFIX}"

    def gets(self, key: str) -> list[str | None]:
        return [rng for path, rng in self.log if path == "/" + key]


def _handler(bucket: FakeBucket):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            parts = urlsplit(self.path)
            bucket.log.append((self.path, self.headers.get("Range")))
            if parts.path == "/" and "list-type=2" in parts.query:
                return self._list(parse_qs(parts.query))
            key = unquote(parts.path.lstrip("/"))
            if key not in bucket.objects:
                return self._send(404, b"<Error><Code>NoSuchKey</Code></Error>", {"Content-Type": "application/xml"})
            data = bucket.objects[key]
            rng = self.headers.get("Range")
            if key in bucket.no_length:
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True
                return
            start, status, headers = 0, 200, {}
            if rng and key not in bucket.ignore_range:
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(data):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            if key in bucket.cut_once:
                n = bucket.cut_once.pop(key)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body[:n])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self._send(status, body, headers)

        def _list(self, q):
            prefix = q.get("prefix", [""])[0]
            keys = sorted(k for k in bucket.objects if k.startswith(prefix))
            start = int(q.get("continuation-token", ["0"])[0])
            page = keys[start:start + bucket.page_size]
            more = start + bucket.page_size < len(keys)
            xml = ['<?xml version="1.0" encoding="UTF-8"?>',
                   '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
                   f"<Name>spacenet-dataset</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{len(page)}</KeyCount>",
                   f"<MaxKeys>{bucket.page_size}</MaxKeys><IsTruncated>{'true' if more else 'false'}</IsTruncated>"]
            for k in page:
                size = bucket.listed_size.get(k, len(bucket.objects[k]))
                xml.append(f"<Contents><Key>{escape(k)}</Key><Size>{size}</Size><StorageClass>STANDARD</StorageClass></Contents>")
            if more:
                xml.append(f"<NextContinuationToken>{start + bucket.page_size}</NextContinuationToken>")
            xml.append("</ListBucketResult>")
            self._send(200, "".join(xml).encode(), {"Content-Type": "application/xml"})

        def _send(self, status, body, headers):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def bucket():
    b = FakeBucket()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(b))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    b.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield b
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def demo_src(tmp_path_factory) -> Path:
    """Two demo tiles in the original release layout, as they would sit inside the Paris tarball."""
    return write_demo_aoi(tmp_path_factory.mktemp("src") / "AOI_3_Paris_Train", n_tiles=2, seed=1)


def _sha(b: bytes | Path) -> str:
    return hashlib.sha256(b.read_bytes() if isinstance(b, Path) else b).hexdigest()


def _tarball(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


@pytest.fixture(scope="module")
def paris_tarball(demo_src) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(demo_src, arcname="AOI_3_Paris_Train")
        extra = tarfile.TarInfo("AOI_3_Paris_Train/MUL/MUL_AOI_3_Paris_img1.tif")  # a product we do not ask for
        extra.size = 5
        tar.addfile(extra, io.BytesIO(b"12345"))
    return buf.getvalue()


TARBALL_KEY = f"{PREFIX}/tarballs/SN2_buildings_train_AOI_3_Paris.tar.gz"


def test_names_and_aliases():
    assert dl.resolve_aoi("Paris") == "AOI_3_Paris"
    assert [dl.resolve_aoi(a) for a in ("vegas", "shanghai", "khartoum", "aoi_5_khartoum")] == [
        "AOI_2_Vegas", "AOI_4_Shanghai", "AOI_5_Khartoum", "AOI_5_Khartoum"]
    with pytest.raises(dl.DownloadError, match="paris"):
        dl.resolve_aoi("rio")
    assert dl.parse_products("PS-RGB, geojson_buildings") == ("PS-RGB", "geojson_buildings")
    with pytest.raises(dl.DownloadError, match="PS-MS"):
        dl.parse_products("RGB")
    assert dl.tarball_url(dl.DEFAULT_BASE_URL, "AOI_3_Paris") == (
        "https://spacenet-dataset.s3.amazonaws.com/spacenet/SN2_buildings/tarballs/SN2_buildings_train_AOI_3_Paris.tar.gz")
    assert dl.object_url(dl.DEFAULT_BASE_URL, "spacenet/SN2_buildings/train/AOI_3_Paris/PS-RGB/a b.tif") == (
        "https://spacenet-dataset.s3.amazonaws.com/spacenet/SN2_buildings/train/AOI_3_Paris/PS-RGB/a%20b.tif")


def test_tarball_resumes_after_a_cut_connection_and_extracts_requested_products(bucket, paris_tarball, demo_src, tmp_path):
    bucket.objects[TARBALL_KEY] = paris_tarball
    cut = len(paris_tarball) // 3
    bucket.cut_once[TARBALL_KEY] = cut
    dest = tmp_path / "data"
    root = dl.download_aoi("paris", dest=dest, base_url=bucket.base_url, keep_archive=True, **FAST)
    assert root == dest / "AOI_3_Paris_Train"
    assert bucket.gets(TARBALL_KEY) == [None, f"bytes={cut}-"], "second request resumes where the cut happened"
    assert _sha(dest / ".downloads" / "SN2_buildings_train_AOI_3_Paris.tar.gz") == _sha(paris_tarball)
    for src in sorted(demo_src.rglob("*")):
        rel = src.relative_to(demo_src)
        wanted = rel.parts[0] in ("RGB-PanSharpen", "geojson", "summaryData")
        if src.is_file():
            assert (root / rel).is_file() == wanted, rel
            if wanted:
                assert _sha(root / rel) == _sha(src)
    assert not (root / "MUL").exists(), "unrequested product extracted"
    assert not list(dest.glob(".bdcore-extract-*")) and not list(dest.rglob("*.part"))
    cat = load_catalog(root)
    assert sorted(cat.index) == ["img1", "img2"]
    # Running again does nothing over the network.
    n = len(bucket.log)
    assert dl.download_aoi("paris", dest=dest, base_url=bucket.base_url, **FAST) == root
    assert len(bucket.log) == n


def test_server_ignoring_range_restarts_from_zero(bucket, tmp_path):
    data = bytes(range(256)) * 400
    bucket.objects["f.bin"] = data
    bucket.ignore_range.add("f.bin")
    out = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"X" * 5000)  # stale bytes that must not survive
    dl.fetch(f"{bucket.url}/f.bin", out, **FAST)
    assert bucket.gets("f.bin") == ["bytes=5000-"]
    assert _sha(out) == _sha(data) and not (tmp_path / "f.bin.part").exists()


def test_416_complete_part_is_accepted_and_oversized_part_restarts(bucket, tmp_path):
    data = b"spacenet" * 1000
    bucket.objects["g.bin"] = data
    (tmp_path / "g.bin.part").write_bytes(data)  # finished earlier, never renamed
    dl.fetch(f"{bucket.url}/g.bin", tmp_path / "g.bin", **FAST)
    assert _sha(tmp_path / "g.bin") == _sha(data)
    (tmp_path / "h.bin.part").write_bytes(data + b"junk")  # longer than the object: stale
    bucket.objects["h.bin"] = data
    dl.fetch(f"{bucket.url}/h.bin", tmp_path / "h.bin", **FAST)
    assert _sha(tmp_path / "h.bin") == _sha(data)
    assert bucket.gets("h.bin") == [f"bytes={len(data) + 4}-", None]


def test_size_mismatch_with_listing_is_an_error(bucket, tmp_path):
    bucket.objects["s.bin"] = b"a" * 1000
    with pytest.raises(dl.DownloadError, match="1000 bytes but 999"):
        dl.fetch(f"{bucket.url}/s.bin", tmp_path / "s.bin", expected_size=999, **FAST)
    assert not (tmp_path / "s.bin").exists()
    # A server with no Content-Length that sends more than the listing said: error, .part kept.
    bucket.objects["t.bin"] = b"b" * 1200
    bucket.no_length.add("t.bin")
    with pytest.raises(dl.DownloadError, match="partial file kept"):
        dl.fetch(f"{bucket.url}/t.bin", tmp_path / "t.bin", expected_size=1000, **FAST)
    assert not (tmp_path / "t.bin").exists() and (tmp_path / "t.bin.part").stat().st_size == 1200


def test_retries_are_bounded_and_http_errors_named(bucket, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with pytest.raises(dl.DownloadError, match="gave up after 3 retries"):
        dl.fetch(f"http://127.0.0.1:{dead}/x.bin", tmp_path / "x.bin", **FAST)
    with pytest.raises(dl.DownloadError, match="HTTP 404") as err:
        dl.fetch(f"{bucket.url}/missing.bin", tmp_path / "m.bin", **FAST)
    assert "missing.bin" in str(err.value)
    # A connection that keeps dying mid-body: the .part is kept and a later call resumes it.
    bucket.objects["c.bin"] = bytes(70000)
    bucket.cut_once["c.bin"] = 30000
    dl.fetch(f"{bucket.url}/c.bin", tmp_path / "c.bin", **FAST)
    assert (tmp_path / "c.bin").stat().st_size == 70000


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


UNSAFE = {
    "dotdot": [(_member("AOI_3_Paris_Train/RGB-PanSharpen/../../../evil.txt"), b"pwned")],
    "absolute": [(_member("/tmp/bdcore-evil.txt"), b"pwned")],
    "symlink_out": [(_member("AOI_3_Paris_Train/RGB-PanSharpen/link", tarfile.SYMTYPE, "../../../outside"), None),
                    (_member("AOI_3_Paris_Train/RGB-PanSharpen/link/evil.txt"), b"pwned")],
    "symlink_abs": [(_member("AOI_3_Paris_Train/RGB-PanSharpen/passwd", tarfile.SYMTYPE, "/etc/passwd"), None)],
    "hardlink_out": [(_member("AOI_3_Paris_Train/RGB-PanSharpen/h", tarfile.LNKTYPE, "../outside.txt"), None)],
    "device": [(_member("AOI_3_Paris_Train/RGB-PanSharpen/dev", tarfile.CHRTYPE), None)],
    # Each link lexically inside; together they lead out: a -> . makes a/b -> ../.. point at dest/..
    "symlink_chain": [(_member("AOI_3_Paris_Train/RGB-PanSharpen/a", tarfile.SYMTYPE, "."), None),
                      (_member("AOI_3_Paris_Train/RGB-PanSharpen/a/b", tarfile.SYMTYPE, "../.."), None),
                      (_member("AOI_3_Paris_Train/RGB-PanSharpen/a/b/evil.txt"), b"pwned")],
    "symlink_inside": [(_member("AOI_3_Paris_Train/RGB-PanSharpen/l.tif", tarfile.SYMTYPE,
                                "RGB-PanSharpen_AOI_3_Paris_img1.tif"), None)],
    "hardlink_inside": [(_member("AOI_3_Paris_Train/RGB-PanSharpen/h.tif", tarfile.LNKTYPE,
                                 "AOI_3_Paris_Train/RGB-PanSharpen/RGB-PanSharpen_AOI_3_Paris_img1.tif"), None)],
    "fifo": [(_member("AOI_3_Paris_Train/RGB-PanSharpen/f", tarfile.FIFOTYPE), None)],
    "sparse": [(_member("AOI_3_Paris_Train/RGB-PanSharpen/s.tif", tarfile.GNUTYPE_SPARSE), b"x")],
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archives_are_rejected_with_nothing_written(case, tmp_path):
    good = (_member("AOI_3_Paris_Train/RGB-PanSharpen/RGB-PanSharpen_AOI_3_Paris_img1.tif"), b"fine")
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tarball([good] + UNSAFE[case]))
    dest = tmp_path / "deep" / "dest"
    dest.mkdir(parents=True)
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(dl.UnsafeArchiveError, match="refusing member|unsafe"):
        dl.safe_extract(archive, dest, products=("PS-RGB",))
    assert sorted(p for p in tmp_path.rglob("*")) == before, "something was written"
    assert not Path("/tmp/bdcore-evil.txt").exists()


@pytest.mark.parametrize("case", ["symlink_chain", "symlink_inside", "hardlink_inside", "fifo", "sparse"])
def test_own_member_check_refuses_links_and_odd_types(case):
    """Refused by ``_check_member`` itself, not only by tarfile's "data" filter (the second line of defence)."""
    info = UNSAFE[case][0][0]
    with pytest.raises(dl.UnsafeArchiveError, match="only files and folders are extracted|device or fifo"):
        dl._check_member(info, Path("a.tar.gz"))


def test_expansion_is_capped(tmp_path):
    """An archive whose members add up to more than the limit is refused before anything lands in ``dest``."""
    assert dl.expansion_limit(2 << 20) == dl.MIN_EXPANSION_LIMIT  # 2 MB archive: 64 MiB, not 2 GiB
    assert dl.expansion_limit(1 << 30) == 20 << 30
    assert dl.expansion_limit(1 << 40) == dl.MAX_EXPANDED_BYTES
    members = [(_member(f"AOI_3_Paris_Train/RGB-PanSharpen/RGB-PanSharpen_AOI_3_Paris_img{i}.tif"), bytes(4000))
               for i in range(5)]
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tarball(members))
    dest = tmp_path / "dest"
    with pytest.raises(dl.DownloadError, match=r"expands to more than 10,000 bytes \(members so far add up to 12,000 bytes"):
        dl.safe_extract(archive, dest, max_bytes=10_000)
    assert list(dest.iterdir()) == []
    assert len(dl.safe_extract(archive, dest, max_bytes=20_000)) == 1  # within the limit: extracted


def test_marker_only_after_the_catalog_was_built(bucket, paris_tarball, tmp_path):
    """A download whose folder fails ``verify`` is not marked done: the next call extracts the kept archive again
    (no network) and, once ``verify`` passes, marks it."""
    bucket.objects[TARBALL_KEY] = paris_tarball
    dest = tmp_path / "data"

    def broken(root: Path) -> None:
        raise ValueError(f"{root}: no SpaceNet tiles found")

    with pytest.raises(dl.DownloadError, match="not usable: .*no SpaceNet tiles found; not marked as done, the archive "
                                               "is kept at .*tar.gz: the same command extracts it again"):
        dl.download_aoi("paris", dest=dest, base_url=bucket.base_url, verify=broken, **FAST)
    root = dest / "AOI_3_Paris_Train"
    assert not (root / dl.MARKER).exists() and (dest / ".downloads" / TARBALL_KEY.rsplit("/", 1)[1]).is_file()
    n = len(bucket.log)
    seen = []
    assert dl.download_aoi("paris", dest=dest, base_url=bucket.base_url, verify=seen.append, **FAST) == root
    assert len(bucket.log) == n and seen == [root]  # re-extracted from the kept archive, verified, marked
    assert (root / dl.MARKER).is_file() and not (dest / ".downloads" / TARBALL_KEY.rsplit("/", 1)[1]).exists()


def test_download_rejects_a_tarball_with_a_dotdot_member(bucket, tmp_path):
    bucket.objects[TARBALL_KEY] = _tarball([(_member("AOI_3_Paris_Train/geojson/buildings/../../../../evil.geojson"), b"{}")])
    dest = tmp_path / "a" / "b"
    with pytest.raises(dl.UnsafeArchiveError, match="evil.geojson"):
        dl.download_aoi("paris", dest=dest, base_url=bucket.base_url, **FAST)
    assert [p.name for p in tmp_path.rglob("evil*")] == []
    assert sorted(p.name for p in dest.iterdir()) == [".downloads"]


def test_corrupt_tarball_is_a_clear_error(bucket, tmp_path):
    bucket.objects[TARBALL_KEY] = b"\x1f\x8b\x08\x00garbage" * 10
    with pytest.raises(dl.DownloadError, match="cannot read the archive"):
        dl.download_aoi("paris", dest=tmp_path, base_url=bucket.base_url, **FAST)


def _bucket_layout(bucket: FakeBucket, demo_src: Path) -> dict[str, Path]:
    """Put the demo tiles into the bucket's per-file layout; return key -> source file."""
    src = {}
    for tif in sorted((demo_src / "RGB-PanSharpen").glob("*.tif")):
        n = tif.stem.rsplit("_", 1)[1]
        src[f"{PREFIX}/train/AOI_3_Paris/PS-RGB/SN2_buildings_train_AOI_3_Paris_PS-RGB_{n}.tif"] = tif
        gj = demo_src / "geojson" / "buildings" / f"buildings_AOI_3_Paris_{n}.geojson"
        src[f"{PREFIX}/train/AOI_3_Paris/geojson_buildings/SN2_buildings_train_AOI_3_Paris_geojson_buildings_{n}.geojson"] = gj
    for key, path in src.items():
        bucket.objects[key] = path.read_bytes()
    bucket.objects[f"{PREFIX}/train/AOI_3_Paris/MS/SN2_buildings_train_AOI_3_Paris_MS_img1.tif"] = b"not asked"
    bucket.objects[f"{PREFIX}/train/AOI_3_Vegas_decoy/PS-RGB/x.tif"] = b"other prefix"
    return src


def test_files_mode_lists_pages_and_downloads_each_object(bucket, demo_src, tmp_path):
    src = _bucket_layout(bucket, demo_src)
    bucket.page_size = 1  # force continuation tokens
    first = next(iter(src))
    bucket.cut_once[first] = 1000
    dest = tmp_path / "d"
    root = dl.download_aoi("paris", dest=dest, base_url=bucket.base_url, method="files", **FAST)
    assert root == dest / "AOI_3_Paris"
    got = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert got == sorted(k.split("train/AOI_3_Paris/")[1] for k in src)
    for key, path in src.items():
        assert _sha(root / key.split("train/AOI_3_Paris/")[1]) == _sha(path)
    assert any("continuation-token=1" in p for p, _ in bucket.log)
    assert bucket.gets(first) == [None, "bytes=1000-"]
    cat = load_catalog(root)
    assert sorted(cat.index) == ["img1", "img2"]
    # Second run: only listings, no object downloads.
    n_objects = sum(1 for p, _ in bucket.log if "list-type" not in p)
    dl.download_aoi("paris", dest=dest, base_url=bucket.base_url, method="files", **FAST)
    assert sum(1 for p, _ in bucket.log if "list-type" not in p) == n_objects


def test_files_mode_listing_size_mismatch(bucket, demo_src, tmp_path):
    src = _bucket_layout(bucket, demo_src)
    key = next(k for k in src if k.endswith(".tif"))
    bucket.listed_size = {key: len(bucket.objects[key]) + 7}
    with pytest.raises(dl.DownloadError, match="were expected"):
        dl.download_aoi("paris", products="PS-RGB", dest=tmp_path, base_url=bucket.base_url, method="files", **FAST)
    assert not (tmp_path / "AOI_3_Paris" / "PS-RGB" / key.rsplit("/", 1)[1]).exists()


def test_cli_download(bucket, demo_src, tmp_path, capsys):
    _bucket_layout(bucket, demo_src)
    rc = cli_main(["download", "--aoi", "paris", "--products", "PS-RGB,geojson_buildings", "--dest", str(tmp_path),
                   "--base-url", bucket.base_url, "--method", "files", "--no-progress"])
    assert rc == 0 and capsys.readouterr().out.strip() == str(tmp_path / "AOI_3_Paris")
    assert cli_main(["download", "--aoi", "rio", "--dest", str(tmp_path), "--base-url", bucket.base_url]) == 2
    assert "unknown AOI" in capsys.readouterr().err
