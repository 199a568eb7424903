"""Fetch SpaceNet 2 from the public, unsigned ``spacenet-dataset`` S3 bucket over plain HTTPS (no AWS account).

Two ways, both resumable (``*.part`` + HTTP Range) and size-verified, standard library only (plus tqdm bars):

- ``method="tarball"``: ``<base>/tarballs/SN2_buildings_train_<AOI>.tar.gz``. The archive holds the original release
  layout (``AOI_3_Paris_Train/{RGB-PanSharpen,MUL-PanSharpen,MUL,PAN,geojson/buildings,summaryData}/``); only the
  requested products (and ``summaryData``) are extracted, into a staging folder first, so an archive with a member
  escaping the destination (``../``, absolute path), any link, device file or other member that is not a file or a
  folder, or one that expands past ``expansion_limit`` (20x its size, at most a whole AOI's expected size) is
  rejected with nothing written. Bucket-style folder names (``PS-RGB/``, ``geojson_buildings/``) inside an archive
  are accepted too. The marker that makes the next call skip the download is written last, after ``verify`` (the
  CLI builds the catalog) succeeded.
- ``method="files"``: objects under ``<base>/train/<AOI>/<product>/`` listed with S3 ListObjectsV2
  (``?list-type=2&prefix=...``, following continuation tokens), saved as ``<dest>/<AOI>/<product>/<name>``.

``base_url`` is a virtual-hosted-style bucket URL plus key prefix: the listing goes to ``scheme://host/`` and
keys are ``<path of base_url>/...``.

This module only fetches files: it does not import the catalog (the ``download`` command builds it afterwards), so
the CLI can read its option defaults without importing geopandas.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import posixpath
import shutil
import tarfile
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Sequence
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlencode, urlsplit
from urllib.request import Request, urlopen

from tqdm.auto import tqdm

from bdcore.atomic import atomic_write_json
from bdcore.data.products import DEFAULT_PRODUCT, LABELS_PRODUCT, LABELS_RELEASE_FOLDER, PRODUCT_TABLE
from bdcore.data.products import PRODUCTS as IMAGE_PRODUCTS
from bdcore.paths import cache_dir

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://spacenet-dataset.s3.amazonaws.com/spacenet/SN2_buildings"
AOI_ALIASES = {
    "paris": "AOI_3_Paris",
    "vegas": "AOI_2_Vegas",
    "shanghai": "AOI_4_Shanghai",
    "khartoum": "AOI_5_Khartoum",
}
# What can be downloaded: the image products and the labels, by their bucket names.
PRODUCTS = (*IMAGE_PRODUCTS, LABELS_PRODUCT)
DEFAULT_PRODUCTS = (DEFAULT_PRODUCT, LABELS_PRODUCT)
# Folder of each bucket product in the original release layout used inside the tarballs.
RELEASE_FOLDERS = {**{p.name: (p.release_folder,) for p in PRODUCT_TABLE},
                   LABELS_PRODUCT: tuple(LABELS_RELEASE_FOLDER.split("/"))}
ALWAYS_EXTRACT = (("summaryData",),)
METHODS = ("tarball", "files")
RETRY_HTTP = {408, 429, 500, 502, 503, 504}
USER_AGENT = "bdcore-download/1 (+urllib)"
MARKER = ".bdcore_download.json"
# Extraction bounds. Bytes per tile of each product, uncompressed (650x650 uint16 PS-RGB 3 bands, PS-MS 8 bands, PAN
# 1 band; 163x163 uint16 MS 8 bands; a dense labels file), with headroom; the largest AOI (Vegas) has 3,851 tiles.
EXPECTED_TILE_BYTES = {"PS-RGB": 3_000_000, "PS-MS": 8_000_000, "MS": 600_000, "PAN": 1_000_000,
                       LABELS_PRODUCT: 500_000}
MAX_AOI_TILES = 4_000
MAX_EXPANDED_BYTES = 2 * MAX_AOI_TILES * sum(EXPECTED_TILE_BYTES.values())  # ~105 GB: a whole AOI, twice over
MAX_EXPANSION_RATIO = 20  # GeoTIFF imagery compresses ~2x; a bomb (2 MB -> 2 GiB) ~1000x
MIN_EXPANSION_LIMIT = 64 << 20  # small archives may expand more than 20x (headers, tiny or blank files)
MEMBER_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE)


class DownloadError(ValueError):
    """A download or extraction failed; the message names the URL/file and what to do."""


class UnsafeArchiveError(DownloadError):
    """An archive member would land outside the destination (or is a device/link that could)."""


# ----------------------------------------------------------------------------------------------- names


def resolve_aoi(aoi: str) -> str:
    """``paris`` / ``AOI_3_Paris`` (any case) -> ``AOI_3_Paris``."""
    key = str(aoi).strip()
    if key.lower() in AOI_ALIASES:
        return AOI_ALIASES[key.lower()]
    for full in AOI_ALIASES.values():
        if key.lower() == full.lower():
            return full
    raise DownloadError(f"unknown AOI {aoi!r}: use one of {', '.join(AOI_ALIASES)} (or {', '.join(AOI_ALIASES.values())})")


def parse_products(products: str | Iterable[str]) -> tuple[str, ...]:
    items = [p.strip() for p in products.split(",")] if isinstance(products, str) else [str(p).strip() for p in products]
    items = [p for p in items if p]
    bad = [p for p in items if p not in PRODUCTS]
    if bad or not items:
        raise DownloadError(f"unknown product(s) {bad or items!r}: choose from {','.join(PRODUCTS)}")
    return tuple(dict.fromkeys(items))


def tarball_url(base_url: str, aoi: str) -> str:
    return f"{base_url.rstrip('/')}/tarballs/SN2_buildings_train_{aoi}.tar.gz"


def _split_base(base_url: str) -> tuple[str, str]:
    """``https://bucket.s3.amazonaws.com/spacenet/SN2_buildings`` -> (endpoint, ``spacenet/SN2_buildings/``)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DownloadError(f"base URL {base_url!r} is not an http(s) URL; pass e.g. --base-url {DEFAULT_BASE_URL}")
    prefix = parts.path.strip("/")
    return f"{parts.scheme}://{parts.netloc}", (prefix + "/") if prefix else ""


def object_url(base_url: str, key: str) -> str:
    endpoint, _ = _split_base(base_url)
    return f"{endpoint}/{quote(key, safe='/-_.~')}"


# ----------------------------------------------------------------------------------------------- HTTP


def _sleep(failures: int, backoff: float) -> None:
    time.sleep(min(30.0, backoff * 2 ** (failures - 1)))


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000)."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    start = None if span.strip() == "*" else int(span.split("-")[0])
    return start, (None if total.strip() == "*" else int(total))


def _get_bytes(url: str, *, retries: int, backoff: float, timeout: float) -> bytes:
    failures = 0
    while True:
        try:
            with urlopen(Request(url, headers={"User-Agent": USER_AGENT}), timeout=timeout) as resp:
                return resp.read()
        except HTTPError as exc:
            if exc.code not in RETRY_HTTP:
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            err: Exception = exc
        except (URLError, OSError, http.client.HTTPException) as exc:
            err = exc
        failures += 1
        if failures > retries:
            raise DownloadError(f"{url}: gave up after {retries} retries ({err}); check the network or --base-url")
        _sleep(failures, backoff)


class _StartOver(Exception):
    """The server's answer does not continue the partial file: delete it and retry from byte 0."""


class _Retries:
    """The retry budget of one download: at most ``retries`` failures in a row without progress."""

    def __init__(self, url: str, path: Path, part: Path, retries: int, backoff: float):
        self.url, self.name, self.part, self.retries, self.backoff = url, path.name, part, retries, backoff
        self.failures = 0

    def progressed(self) -> None:
        self.failures = 0  # the budget is per stall

    def retry(self, reason: str) -> None:
        """Count a failure and wait (exponential backoff), or give up with a DownloadError saying how to resume."""
        self.failures += 1
        if self.failures > self.retries:
            have = self.part.stat().st_size if self.part.exists() else 0
            raise DownloadError(f"{self.url}: gave up after {self.retries} retries ({reason}); {have} bytes kept in "
                                f"{self.part}, run the same command again to resume")
        log.info("%s: %s; retry %d/%d", self.name, reason, self.failures, self.retries)
        _sleep(self.failures, self.backoff)


def _resume_offset(part: Path, total: int | None) -> int:
    """Bytes already in ``part``; a partial file larger than the object is stale and removed."""
    offset = part.stat().st_size if part.exists() else 0
    if total is not None and offset > total:
        log.info("%s: stale partial file larger than the object; starting over", part)
        part.unlink()
        offset = 0
    return offset


def _after_http_error(exc: HTTPError, url: str, part: Path, offset: int, total: int | None,
                      tries: _Retries) -> int | None:
    """The object's size when a 416 says ``part`` is already whole; None after counting a retry; else raises."""
    if exc.code == 416:  # our offset is at or beyond the end
        _, size = _content_range(exc.headers.get("Content-Range"))
        if size is not None and total is not None and size != total:
            raise DownloadError(f"{url}: server reports {size} bytes but {total} were expected; "
                                f"partial file kept at {part}") from None
        if size is not None and offset == size:
            return size
        part.unlink(missing_ok=True)
        tries.retry("HTTP 416 for a stale partial file; starting over")
        return None
    if exc.code in RETRY_HTTP:
        tries.retry(f"HTTP {exc.code}")
        return None
    raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None


def _body_start(resp, url: str, name: str, part: Path, offset: int, total: int | None) -> tuple[int, str, int | None]:
    """(offset the body starts at, file mode, object size) of a 200/206 answer; _StartOver when a 206 starts
    elsewhere than ``offset``, DownloadError when the size is not the one expected."""
    if resp.status == 206:
        start, size = _content_range(resp.headers.get("Content-Range"))
        if start != offset:
            raise _StartOver(f"server answered a range starting at {start}, not {offset}; starting over")
        mode = "ab"
    else:  # 200: the whole object, whatever we asked for
        if offset:
            log.info("%s: server ignored the Range request; starting over", name)
        length = resp.headers.get("Content-Length")
        offset, mode, size = 0, "wb", int(length) if length is not None else None
    if size is not None and total is not None and size != total:
        raise DownloadError(f"{url}: server reports {size} bytes but {total} were expected (listing); "
                            f"not downloading{f', partial file kept at {part}' if part.exists() else ''}")
    return offset, mode, size if size is not None else total


def _copy_body(resp, name: str, part: Path, mode: str, offset: int, total: int | None, chunk_size: int,
               progress: bool) -> None:
    """Write the response body to ``part`` (a byte progress bar named ``name`` on stderr unless not ``progress``)."""
    with tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
              desc=name, disable=not progress, leave=False) as bar, open(part, mode) as f:
        while True:
            buf = resp.read(chunk_size)
            if not buf:
                break
            f.write(buf)
            bar.update(len(buf))


def fetch(url: str, path: str | os.PathLike, expected_size: int | None = None, *, progress: bool = True,
          retries: int = 5, backoff: float = 1.0, timeout: float = 60.0, chunk_size: int = 1 << 20) -> Path:
    """Download ``url`` to ``path`` via ``path.part``, resuming a previous ``.part`` with an HTTP Range request.

    A server that ignores Range (200) makes us start over; 416 means the ``.part`` is already whole (or stale).
    Connection errors and short bodies are retried with exponential backoff, at most ``retries`` times in a row
    without progress. The final size must equal ``expected_size`` (e.g. from the S3 listing) and the server's
    length; on a mismatch a ``DownloadError`` is raised and the ``.part`` is kept for inspection.
    """
    path = Path(path)
    part = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and (expected_size is None or path.stat().st_size == expected_size):
        return path
    total = expected_size
    tries = _Retries(url, path, part, retries, backoff)
    while True:
        offset = _resume_offset(part, total)
        if total is not None and offset == total and (offset > 0 or part.exists()):
            break
        headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={offset}-"} if offset else {})}
        try:
            resp = urlopen(Request(url, headers=headers), timeout=timeout)
        except HTTPError as exc:
            whole = _after_http_error(exc, url, part, offset, total, tries)
            if whole is None:
                continue
            total = whole
            break
        except (URLError, OSError, http.client.HTTPException) as exc:
            tries.retry(f"connection error: {getattr(exc, 'reason', exc)}")
            continue
        with resp:
            try:
                before, mode, total = _body_start(resp, url, path.name, part, offset, total)
            except _StartOver as exc:
                part.unlink(missing_ok=True)
                tries.retry(str(exc))
                continue
            try:
                _copy_body(resp, path.name, part, mode, before, total, chunk_size, progress)
            except (OSError, http.client.HTTPException) as exc:
                got = part.stat().st_size
                if got > before:
                    tries.progressed()
                tries.retry(f"connection lost after {got} bytes: {exc}")
                continue
        got = part.stat().st_size
        if total is None or got == total:  # no length from the server and none expected: accept what we got
            break
        if got > total:
            raise DownloadError(f"{url}: received {got} bytes but {total} were expected; partial file kept at {part}")
        if got > before:
            tries.progressed()
        tries.retry(f"connection closed after {got} of {total} bytes")

    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        raise DownloadError(f"{url}: size {size} != expected {expected_size}; partial file kept at {part}")
    os.replace(part, path)
    return path


def list_objects(base_url: str, prefix: str, *, retries: int = 5, backoff: float = 1.0,
                 timeout: float = 60.0) -> list[tuple[str, int]]:
    """(key, size) of every object under ``<base key prefix><prefix>`` via S3 ListObjectsV2, all pages."""
    endpoint, key_prefix = _split_base(base_url)
    full = key_prefix + prefix
    out: list[tuple[str, int]] = []
    token = None
    while True:
        query = {"list-type": "2", "prefix": full}
        if token:
            query["continuation-token"] = token
        url = f"{endpoint}/?{urlencode(query)}"
        body = _get_bytes(url, retries=retries, backoff=backoff, timeout=timeout)
        try:
            root = ET.fromstring(body)
        except ET.ParseError as exc:
            raise DownloadError(f"{url}: not an S3 ListObjectsV2 answer ({exc}); check --base-url") from None
        if not root.tag.endswith("ListBucketResult"):
            raise DownloadError(f"{url}: not an S3 ListObjectsV2 answer (root <{root.tag}>); check --base-url")
        for c in root.findall("{*}Contents"):
            key, size = c.findtext("{*}Key"), c.findtext("{*}Size")
            if key and not key.endswith("/"):
                out.append((key, int(size or 0)))
        if (root.findtext("{*}IsTruncated") or "").lower() != "true":
            return out
        token = root.findtext("{*}NextContinuationToken")
        if not token:
            raise DownloadError(f"{url}: truncated listing without a continuation token")


# ----------------------------------------------------------------------------------------------- extraction


def _check_member(m: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    """Member path relative to the destination, or ``UnsafeArchiveError``. Only regular files and folders pass: a
    link is refused wherever it points (lexically inside is not enough: ``a -> .`` then ``a/b -> ../..`` chains out
    through the first link), as is every other member type (device, fifo, sparse file, ...)."""
    name = m.name.replace("\\", "/")

    def bad(why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"{archive}: refusing member {m.name!r} ({why}); the archive is unsafe or corrupt, "
                                  "nothing was extracted")

    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise bad("absolute path")
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../") or ".." in PurePosixPath(name).parts:
        raise bad("path escapes the destination")
    if m.issym() or m.islnk():
        raise bad(_link_problem(m, norm))
    if m.isdev() or m.isfifo():
        raise bad("device or fifo")
    if m.type not in MEMBER_TYPES:
        raise bad(f"member type {m.type!r}; only files and folders are extracted")
    return PurePosixPath(norm)


def _link_problem(m: tarfile.TarInfo, norm: str) -> str:
    """Why a link member is refused: its target is outside the destination, or it is a link at all."""
    link = m.linkname.replace("\\", "/")
    kind = "symlink" if m.issym() else "hard link"
    if link.startswith("/") or (len(link) > 1 and link[1] == ":"):
        return f"link to absolute path {m.linkname!r}"
    base = posixpath.dirname(norm) if m.issym() else ""
    target = posixpath.normpath(posixpath.join(base, link))
    if target == ".." or target.startswith("../"):
        return f"link target {m.linkname!r} is outside the destination"
    return f"{kind} to {m.linkname!r}; only files and folders are extracted (SpaceNet archives hold no links)"


def _wanted(rel: PurePosixPath, products: Sequence[str] | None) -> bool:
    if products is None:
        return True
    parts = rel.parts
    folders = [RELEASE_FOLDERS[p] for p in products] + [(p,) for p in products] + list(ALWAYS_EXTRACT)
    return any(parts[i:i + len(f)] == f for f in folders for i in range(len(parts) - len(f) + 1))


def _merge(src: Path, dst: Path) -> None:
    """Move a staged tree into place, file by file (os.replace), keeping files already in ``dst``'s other paths."""
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        return
    if src.is_dir() and dst.is_dir():
        for child in src.iterdir():
            _merge(child, dst / child.name)
        src.rmdir()
    else:
        os.replace(src, dst)


def expansion_limit(archive_size: int) -> int:
    """Most bytes an archive of ``archive_size`` bytes may expand to: ``MAX_EXPANSION_RATIO`` times its size (at least
    ``MIN_EXPANSION_LIMIT``, for small archives of tiny files), never more than ``MAX_EXPANDED_BYTES`` (a whole AOI
    with every product, from the expected product sizes)."""
    return min(MAX_EXPANDED_BYTES, max(MIN_EXPANSION_LIMIT, MAX_EXPANSION_RATIO * archive_size))


def _expansion_error(archive: Path, total: int, limit: int) -> DownloadError:
    size = archive.stat().st_size
    return DownloadError(
        f"{archive}: expands to more than {limit:,} bytes (members so far add up to {total:,} bytes, from a "
        f"{size:,}-byte archive; a "
        f"SpaceNet 2 AOI tarball expands to at most {MAX_EXPANSION_RATIO}x its size and {MAX_EXPANDED_BYTES:,} bytes); "
        "refusing it as corrupt or hostile, nothing was extracted: delete it and download again")


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike,
                 products: Sequence[str] | None = None, max_bytes: int | None = None) -> list[Path]:
    """Extract ``archive`` (tar, any compression, streamed) into ``dest``; return the top-level paths written.

    Every member is checked before anything is written; extraction happens in a staging folder inside ``dest``
    that is merged into place only once the whole archive was read, so a bad member leaves ``dest`` untouched.
    ``products`` limits extraction to those products' folders (plus ``summaryData``). The members' sizes, extracted
    or not, may add up to ``max_bytes`` (default ``expansion_limit`` of the archive's size); past it, DownloadError.
    """
    archive, dest = Path(archive), Path(dest).absolute()
    limit = expansion_limit(archive.stat().st_size) if max_bytes is None else max_bytes
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f".bdcore-extract-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        _extract_members(archive, staging, products, limit)
        tops = sorted(staging.iterdir())
        for top in tops:
            _merge(top, dest / top.name)
        return [dest / t.name for t in tops]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract_members(archive: Path, staging: Path, products: Sequence[str] | None, limit: int) -> None:
    """Stream ``archive`` into ``staging``: every member checked, the wanted ones written, the total size capped."""
    total = 0
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for m in tar:
                rel = _check_member(m, archive)
                total += m.size
                if total > limit:
                    raise _expansion_error(archive, total, limit)
                if _wanted(rel, products):
                    tar.extract(m, staging, filter="data")  # second line of defence (PEP 706)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, tarfile.FilterError):
            raise UnsafeArchiveError(f"{archive}: unsafe member ({exc}); nothing was extracted") from None
        raise DownloadError(f"{archive}: cannot read the archive ({exc}); delete it and download again") from None


# ----------------------------------------------------------------------------------------------- AOI download


def default_dest() -> Path:
    return cache_dir() / "spacenet"


def _find_root(dest: Path, aoi: str, tops: list[Path]) -> Path:
    for name in (f"{aoi}_Train", aoi):
        if (dest / name).is_dir():
            return dest / name
    dirs = [t for t in tops if t.is_dir()]
    return dirs[0] if len(dirs) == 1 else dest


def _downloaded_root(dest: Path, aoi: str, url: str, products: Sequence[str]) -> Path | None:
    """The AOI folder a previous tarball download of ``url`` with (at least) ``products`` left, if any."""
    for name in (f"{aoi}_Train", aoi):
        marker = dest / name / MARKER
        if marker.is_file():
            done = json.loads(marker.read_text())
            if done.get("url") == url and set(products) <= set(done.get("products", [])):
                return marker.parent
    return None


def _verified(root: Path, verify: Callable[[Path], Any] | None, kept: str) -> None:
    """Run ``verify(root)`` (e.g. build the catalog); its ValueError becomes a DownloadError saying what was kept."""
    if verify is None:
        return
    try:
        verify(root)
    except ValueError as exc:
        raise DownloadError(f"downloaded into {root}, but it is not usable: {exc}; not marked as done, {kept}") from None


def _download_tarball(aoi: str, products: Sequence[str], dest: Path, base_url: str, progress: bool,
                      keep_archive: bool, opts: dict, verify: Callable[[Path], Any] | None = None) -> Path:
    url = tarball_url(base_url, aoi)
    done = _downloaded_root(dest, aoi, url, products)
    if done is not None:
        log.info("%s already downloaded in %s", aoi, done)
        _verified(done, verify, f"delete {done / MARKER} to download it again")
        return done
    archive = dest / ".downloads" / url.rsplit("/", 1)[1]
    log.info("downloading %s", url)
    fetch(url, archive, progress=progress, **opts)
    log.info("extracting %s (%s)", archive.name, ", ".join(products))
    tops = safe_extract(archive, dest, products)
    root = _find_root(dest, aoi, tops)
    _verified(root, verify, f"the archive is kept at {archive}: the same command extracts it again without "
                            "downloading (delete it to download again)")
    # The marker makes the next call return at once, so it is written only after everything above succeeded.
    atomic_write_json(root / MARKER, {"url": url, "products": list(products), "aoi": aoi,
                                      "archive_size": archive.stat().st_size})
    if not keep_archive:
        archive.unlink()
    return root


def _download_files(aoi: str, products: Sequence[str], dest: Path, base_url: str, progress: bool,
                    opts: dict, verify: Callable[[Path], Any] | None = None) -> Path:
    root = dest / aoi
    for product in products:
        objects = list_objects(base_url, f"train/{aoi}/{product}/", **opts)
        if not objects:
            raise DownloadError(f"{base_url}: no objects under train/{aoi}/{product}/; check --aoi/--products")
        log.info("%s/%s: %d files", aoi, product, len(objects))
        for key, size in tqdm(objects, desc=product, unit="file", disable=not progress):
            fetch(object_url(base_url, key), root / product / key.rsplit("/", 1)[1], expected_size=size,
                  progress=False, **opts)
    _verified(root, verify, "the same command checks the files again and fetches only what is missing")
    return root


def download_aoi(aoi: str = "paris", products: str | Sequence[str] = DEFAULT_PRODUCTS,
                 dest: str | os.PathLike | None = None, base_url: str = DEFAULT_BASE_URL, method: str = "tarball",
                 *, progress: bool = True, keep_archive: bool = False, retries: int = 5,
                 backoff: float = 1.0, timeout: float = 60.0, verify: Callable[[Path], Any] | None = None) -> Path:
    """Download one SpaceNet 2 training AOI and return its folder (what ``catalog.load_catalog`` takes).

    ``method``: one of ``METHODS`` (see the module docstring). Nothing is fetched again that is already there.
    ``verify(root)`` (the CLI builds the catalog) runs before a tarball download is marked as done; its ValueError
    becomes a DownloadError, no marker is written and the archive is kept, so the next call extracts it again."""
    aoi = resolve_aoi(aoi)
    products = parse_products(products)
    if method not in METHODS:
        raise DownloadError(f"unknown method {method!r}: use tarball or files")
    dest = Path(dest).expanduser().absolute() if dest else default_dest()
    dest.mkdir(parents=True, exist_ok=True)
    _split_base(base_url)
    opts = dict(retries=retries, backoff=backoff, timeout=timeout)
    if method == "tarball":
        return _download_tarball(aoi, products, dest, base_url, progress, keep_archive, opts, verify)
    return _download_files(aoi, products, dest, base_url, progress, opts, verify)
