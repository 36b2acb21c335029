"""COCO download tools (captioner.download, ``captioner data download``, scripts/download_coco.py) against a local
Range-honouring HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from captioner import download as dl
from captioner.cli import download as download_cli
from captioner.cli import main
from captioner.cli.main import build_parser
from captioner.download import (
    ChecksumError,
    DownloadError,
    RemoteZip,
    RemoteZipError,
    UnsafePathError,
    download,
    extract_members,
    fetch_remote_members,
    load_manifest,
    safe_member_path,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "download_coco.py"


# --------------------------------------------------------------------------------------------------- server


class Site:
    """What the test server serves, how it misbehaves, and what it saw."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}  # path -> body bytes sent before the connection is cut (once)
        self.ignore_range = False
        self.requests: list[dict] = []
        self.bytes_sent = 0
        self.base = ""
        self.lock = threading.Lock()

    def etag(self, path: str) -> str:
        return '"' + hashlib.sha256(self.files[path]).hexdigest()[:16] + '"'

    def url(self, path: str) -> str:
        return self.base + path


def parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """(first, last) of a single byte range, "unsatisfiable", or None to ignore it."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", value.strip())
    if not match or not (match[1] or match[2]):
        return None
    if not match[1]:
        suffix = int(match[2])
        return (max(0, size - suffix), size - 1) if suffix else "unsatisfiable"
    first = int(match[1])
    last = min(int(match[2]), size - 1) if match[2] else size - 1
    if first >= size:
        return "unsatisfiable"
    return (first, last) if last >= first else None


class RangeHandler(BaseHTTPRequestHandler):
    """GET/HEAD with single byte ranges (incl. suffix ranges), If-Range, and an optional cut connection."""

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def _serve(self, send_body: bool) -> None:
        site: Site = self.server.site
        record = {"path": self.path, "range": self.headers.get("Range"), "if_range": self.headers.get("If-Range")}
        with site.lock:
            site.requests.append(record)
        body = site.files.get(self.path)
        if body is None:
            record["status"] = 404
            self.send_error(404)
            return
        span = None
        if record["range"] and not site.ignore_range and record["if_range"] in (None, site.etag(self.path)):
            span = parse_range(record["range"], len(body))
        if span == "unsatisfiable":
            record["status"] = 416
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        first, last = span or (0, len(body) - 1)
        record["status"] = 206 if span else 200
        self.send_response(record["status"])
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("ETag", site.etag(self.path))
        self.send_header("Accept-Ranges", "bytes")
        if span:
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(body)}")
        self.end_headers()
        if send_body:
            self._send(site, body[first : last + 1])

    def _send(self, site: Site, payload: bytes) -> None:
        with site.lock:
            limit = site.drop_after.pop(self.path, None)
        if limit is not None:
            payload = payload[:limit]
            self.close_connection = True
        with site.lock:  # count before writing: the client may finish reading before this thread runs again
            site.bytes_sent += len(payload)
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def server():
    site = Site()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.site = site
    site.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield site
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------------- archives


def make_zip(path: Path, count: int = 40, folder: str = "val2017", seed: int = 0) -> dict[str, bytes]:
    """A zip of ``count`` pseudo-images of 3-6 KB under ``folder/``, even ones stored, odd ones deflated."""
    rng = random.Random(seed)
    originals = {}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(zipfile.ZipInfo(f"{folder}/", date_time=(2017, 1, 1, 0, 0, 0)), b"")
        for index in range(count):
            name = f"{folder}/{index:012d}.jpg"
            size = rng.randint(3000, 6000)
            data = rng.randbytes(size // 2) + bytes([index]) * (size - size // 2)
            info = zipfile.ZipInfo(name, date_time=(2017, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED if index % 2 == 0 else zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
            originals[name] = data
    return originals


@pytest.fixture(scope="module")
def coco_zip(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    path = tmp_path_factory.mktemp("zips") / "val2017.zip"
    return path, make_zip(path)


def pick(originals: dict[str, bytes], count: int = 5) -> list[str]:
    """A few members, stored and deflated, spread over the archive."""
    names = sorted(originals)
    chosen = [names[i] for i in (0, 7, 18, 29, 39)][:count]
    return chosen


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def payload(size: int = 300_000, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


# --------------------------------------------------------------------------------------------------- download


def test_download_verifies_and_skips_when_complete(server, tmp_path):
    data = payload()
    server.files["/zips/val2017.zip"] = data
    dest = tmp_path / "out" / "val2017.zip"
    result = download(server.url("/zips/val2017.zip"), dest, len(data), md5(data), progress=False)
    assert result == dest and dest.read_bytes() == data
    assert sorted(p.name for p in dest.parent.iterdir()) == ["val2017.zip"]  # no .part, .json or sidecar left
    download(server.url("/zips/val2017.zip"), dest, len(data), md5(data), progress=False)
    assert len(server.requests) == 1  # the second call verified the file instead of downloading it


def test_download_killed_midway_resumes_with_range(server, tmp_path):
    data = payload()
    server.files["/big.zip"] = data
    server.drop_after["/big.zip"] = 100_000
    dest = tmp_path / "big.zip"
    with pytest.raises(DownloadError, match="failed after 1 attempt"):
        download(server.url("/big.zip"), dest, len(data), md5(data), retries=0, progress=False)
    part = tmp_path / "big.zip.part"
    assert part.stat().st_size == 100_000 and not dest.exists()

    download(server.url("/big.zip"), dest, len(data), md5(data), retries=0, progress=False)
    assert dest.read_bytes() == data and not part.exists()
    first, second = server.requests
    assert first["range"] is None and first["status"] == 200
    assert second["range"] == "bytes=100000-" and second["status"] == 206
    assert second["if_range"] == server.etag("/big.zip")
    assert server.bytes_sent == len(data)  # nothing was sent twice


def test_download_retries_within_one_call(server, tmp_path):
    data = payload(seed=2)
    server.files["/f.bin"] = data
    server.drop_after["/f.bin"] = 12_345
    dest = download(server.url("/f.bin"), tmp_path / "f.bin", retries=2, retry_wait=0, progress=False)
    assert dest.read_bytes() == data
    assert [r["range"] for r in server.requests] == [None, "bytes=12345-"]


def test_download_restarts_when_server_ignores_range(server, tmp_path):
    data = payload(seed=3)
    server.files["/f.bin"] = data
    server.ignore_range = True
    (tmp_path / "f.bin.part").write_bytes(b"x" * 1000)  # stale bytes that must not survive
    download(server.url("/f.bin"), tmp_path / "f.bin", len(data), md5(data), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert server.requests[0]["range"] == "bytes=1000-" and server.requests[0]["status"] == 200


def test_download_restarts_when_file_changed_upstream(server, tmp_path):
    data = payload(seed=4)
    server.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(b"y" * 1000)
    (tmp_path / "f.bin.part.json").write_text(json.dumps({"etag": '"old"', "last_modified": None}))
    download(server.url("/f.bin"), tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert server.requests[0]["if_range"] == '"old"' and server.requests[0]["status"] == 200


def test_download_finishes_a_complete_part_file(server, tmp_path):
    data = payload(seed=5)
    server.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data)  # killed after the last byte, before the rename
    download(server.url("/f.bin"), tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert server.requests[0]["status"] == 416 and server.bytes_sent == 0


def test_download_wrong_md5_is_moved_aside(server, tmp_path):
    data = payload(seed=6)
    server.files["/f.zip"] = data
    dest = tmp_path / "f.zip"
    with pytest.raises(ChecksumError) as info:
        download(server.url("/f.zip"), dest, len(data), "0" * 32, progress=False)
    message = str(info.value)
    assert str(dest) in message and "MD5" in message and "f.zip.corrupt" in message and "\n" not in message
    assert not dest.exists() and not (tmp_path / "f.zip.part").exists()
    assert (tmp_path / "f.zip.corrupt").read_bytes() == data


def test_download_records_sha256_sidecar_and_detects_corruption(server, tmp_path):
    data = payload(seed=7)
    server.files["/f.zip"] = data
    dest = tmp_path / "f.zip"
    download(server.url("/f.zip"), dest, progress=False)
    sidecar = tmp_path / "f.zip.sha256"
    assert sidecar.read_text().split() == [hashlib.sha256(data).hexdigest(), "f.zip"]

    dest.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # same size, one byte flipped
    with pytest.raises(ChecksumError, match=r"f\.zip is corrupt: its SHA-256 .* recorded"):
        download(server.url("/f.zip"), dest, progress=False)
    assert not dest.exists() and (tmp_path / "f.zip.corrupt").exists()

    download(server.url("/f.zip"), dest, progress=False)  # the rerun downloads again and matches the sidecar
    assert dest.read_bytes() == data


def test_download_refuses_unexpected_size_and_http_errors(server, tmp_path):
    data = payload(seed=8)
    server.files["/f.zip"] = data
    with pytest.raises(DownloadError, match=f"reports {len(data)} bytes but {len(data) + 1}"):
        download(server.url("/f.zip"), tmp_path / "f.zip", len(data) + 1, progress=False)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(server.url("/missing.zip"), tmp_path / "m.zip", retries=3, retry_wait=0, progress=False)
    assert [r["path"] for r in server.requests].count("/missing.zip") == 1  # a 404 is not retried


def test_coco_url_base_override():
    assert dl.coco_url("val2017") == "http://images.cocodataset.org/zips/val2017.zip"
    assert dl.coco_url("annotations_trainval2014", "http://127.0.0.1:8/mirror/") == (
        "http://127.0.0.1:8/mirror/annotations/annotations_trainval2014.zip"
    )
    with pytest.raises(DownloadError, match="unknown COCO archive"):
        dl.coco_url("val2099")


# --------------------------------------------------------------------------------------------------- members


def test_extract_members_from_local_zip(coco_zip, tmp_path):
    path, originals = coco_zip
    chosen = pick(originals)
    report = extract_members(path, chosen, tmp_path)
    assert (report.written, report.skipped, report.bytes_transferred) == (5, 0, 0)
    assert sorted(p.name for p in (tmp_path / "val2017").iterdir()) == sorted(Path(n).name for n in chosen)
    for name in chosen:
        assert (tmp_path / name).read_bytes() == originals[name]

    (tmp_path / chosen[1]).write_bytes(b"broken")
    report = extract_members(path, chosen, tmp_path)
    assert (report.written, report.skipped) == (1, 4)
    assert (tmp_path / chosen[1]).read_bytes() == originals[chosen[1]]

    with pytest.raises(DownloadError, match="1 of 1 requested members are not in"):
        extract_members(path, ["val2017/nope.jpg"], tmp_path)


def test_remote_subset_fetches_a_small_fraction(server, coco_zip, tmp_path):
    path, originals = coco_zip
    raw = path.read_bytes()
    server.files["/zips/val2017.zip"] = raw
    chosen = pick(originals)
    report = fetch_remote_members(server.url("/zips/val2017.zip"), chosen, tmp_path, retry_wait=0, progress=False)

    assert (report.written, report.skipped, report.archive_size) == (5, 0, len(raw))
    for name in chosen:
        assert (tmp_path / name).read_bytes() == originals[name]
    assert len(list((tmp_path / "val2017").iterdir())) == 5
    assert report.bytes_transferred == server.bytes_sent
    assert report.bytes_transferred < len(raw) / 4
    assert len(server.requests) == 2 + 5 and all(r["status"] == 206 for r in server.requests)  # tail, directory


def test_remote_rerun_skips_valid_members_and_refetches_damaged(server, coco_zip, tmp_path):
    path, originals = coco_zip
    server.files["/zips/val2017.zip"] = path.read_bytes()
    chosen = pick(originals)
    fetch_remote_members(server.url("/zips/val2017.zip"), chosen, tmp_path, progress=False)
    target = tmp_path / chosen[2]
    target.write_bytes(bytes(len(originals[chosen[2]])))  # right size, wrong content
    report = fetch_remote_members(server.url("/zips/val2017.zip"), chosen, tmp_path, progress=False)
    assert (report.written, report.skipped) == (1, 4)
    assert target.read_bytes() == originals[chosen[2]]


def test_remote_member_fetch_is_retried_after_a_cut(server, coco_zip, tmp_path):
    path, originals = coco_zip
    server.files["/zips/val2017.zip"] = path.read_bytes()
    archive = RemoteZip(server.url("/zips/val2017.zip"), retry_wait=0)
    name = pick(originals)[1]
    server.drop_after["/zips/val2017.zip"] = 100  # the next response is cut inside the member's data
    assert archive.fetch(archive.members[name], tmp_path)
    assert (tmp_path / name).read_bytes() == originals[name]
    assert not (tmp_path / (name + ".part")).exists()


def test_remote_reads_zip64_archive(server, tmp_path):
    path = tmp_path / "val2017.zip"
    with pytest.MonkeyPatch.context() as patch:  # tiny limits make zipfile write every ZIP64 structure
        patch.setattr(zipfile, "ZIP64_LIMIT", 1000)
        patch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 8)
        originals = make_zip(path, count=12, seed=9)
    raw = bytearray(path.read_bytes())
    eocd = raw.rindex(b"PK\x05\x06")
    assert raw[eocd - 20 : eocd - 16] == b"PK\x06\x07"  # ZIP64 locator, pointing at the ZIP64 end record
    record = raw.rindex(b"PK\x06\x06")
    cd_offset = struct.unpack_from("<Q", raw, record + 48)[0]
    entries = [pos for pos in range(cd_offset, record) if raw[pos : pos + 4] == b"PK\x01\x02"]
    saturated = [struct.unpack_from("<II", raw, pos + 20) for pos in entries]
    assert (0xFFFFFFFF, 0xFFFFFFFF) in saturated  # sizes held in ZIP64 extra fields of the central directory
    # Like writers do for archives past the 32-bit limits (COCO's train2017.zip): saturate the classic end record.
    struct.pack_into("<HHII", raw, eocd + 8, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    server.files["/zips/val2017.zip"] = bytes(raw)

    archive = RemoteZip(server.url("/zips/val2017.zip"))
    with zipfile.ZipFile(path) as reference:
        expected = {i.filename: (i.header_offset, i.compress_size, i.file_size, i.CRC) for i in reference.infolist()}
    found = {m.name: (m.header_offset, m.compressed_size, m.file_size, m.crc) for m in archive.members.values()}
    assert found == expected
    chosen = sorted(originals)[::3]
    report = fetch_remote_members(server.url("/zips/val2017.zip"), chosen, tmp_path / "out", progress=False)
    assert report.written == len(chosen)
    for name in chosen:
        assert (tmp_path / "out" / name).read_bytes() == originals[name]


class _Unseekable:
    """A write-only stream: zipfile then writes data descriptors after each member (flag bit 3)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> int:
        self.data += chunk
        return len(chunk)

    def flush(self) -> None:
        pass


def test_remote_reads_data_descriptors_and_long_comment(server, tmp_path):
    stream, originals, rng = _Unseekable(), {}, random.Random(11)
    with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for index in range(6):
            originals[f"val2017/{index}.jpg"] = rng.randbytes(2500) + bytes(2500)
            archive.writestr(f"val2017/{index}.jpg", originals[f"val2017/{index}.jpg"])
        archive.comment = b"c" * 3000  # pushes the end record out of the first 1 KB tail read
    server.files["/dd.zip"] = bytes(stream.data)
    archive = RemoteZip(server.url("/dd.zip"))
    assert all(member.flags & 0x8 for member in archive.members.values())
    report = fetch_remote_members(server.url("/dd.zip"), ["val2017/2.jpg", "val2017/5.jpg"], tmp_path, progress=False)
    assert report.written == 2
    for name in ("val2017/2.jpg", "val2017/5.jpg"):
        assert (tmp_path / name).read_bytes() == originals[name]


def test_remote_needs_range_support(server, coco_zip, tmp_path):
    server.files["/zips/val2017.zip"] = coco_zip[0].read_bytes()
    server.ignore_range = True
    with pytest.raises(RemoteZipError, match="ignored the Range request.*omit --remote"):
        fetch_remote_members(server.url("/zips/val2017.zip"), ["val2017/000000000000.jpg"], tmp_path)
    assert len(server.requests) == 1  # refused at once (the connection is closed without reading the body)


def test_remote_rejects_non_zip(server, tmp_path):
    server.files["/x.zip"] = payload(5000, seed=10)
    with pytest.raises(RemoteZipError, match="not a zip archive"):
        RemoteZip(server.url("/x.zip"))


@pytest.mark.parametrize("name", ["../evil.txt", "val2017/../../evil.txt", "/etc/evil", "C:/evil.txt", "..\\evil"])
def test_safe_member_path_rejects_escaping_names(tmp_path, name):
    with pytest.raises(UnsafePathError, match="outside"):
        safe_member_path(tmp_path / "out", name)
    assert safe_member_path(tmp_path / "out", "val2017/a.jpg") == tmp_path / "out" / "val2017" / "a.jpg"


def test_escaping_members_rejected_before_writing(server, tmp_path):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("val2017/fine.jpg", b"fine")
        archive.writestr("../evil.txt", b"evil")
    out = tmp_path / "a" / "out"
    with pytest.raises(UnsafePathError):
        extract_members(path, None, out)
    server.files["/evil.zip"] = path.read_bytes()
    with pytest.raises(UnsafePathError):
        fetch_remote_members(server.url("/evil.zip"), ["val2017/fine.jpg", "../evil.txt"], out, progress=False)
    assert not (tmp_path / "a" / "evil.txt").exists() and not out.exists()


def test_load_manifest(tmp_path):
    good = tmp_path / "m.json"
    images = [{"file_name": "a.jpg", "id": 1}, {"file_name": "b.jpg"}, {"file_name": "a.jpg"}]
    good.write_text(json.dumps({"images": images}))
    assert load_manifest(good) == ["a.jpg", "b.jpg"]
    assert dl.member_names(["a.jpg"], "val2017") == ["val2017/a.jpg"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 3}]}))
    with pytest.raises(DownloadError, match=r'images\[0\] has no "file_name"'):
        load_manifest(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(DownloadError, match='"images" list'):
        load_manifest(bad)


# --------------------------------------------------------------------------------------------------- CLI


def download_parser() -> argparse.ArgumentParser:
    """The ``data download`` parser made by ``add_parser`` alone, whether or not ``captioner data`` wires it in."""
    actions = argparse.ArgumentParser(prog="captioner data").add_subparsers(dest="data_command")
    download_cli.add_parser(actions)
    return actions.choices["download"]


def download_main(*args: str) -> int:
    return main(["data", "download", *args])


def write_manifest(path: Path, names: list[str]) -> Path:
    path.write_text(json.dumps({"images": [{"file_name": Path(n).name} for n in names]}))
    return path


def error_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_cli_help_explains_every_option():
    parser = download_parser()
    assert parser.get_default("run") is download_cli.run
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
    text = parser.format_help()
    for option in ("--base-url", "--subset", "--remote", "--prefix", "--retries", "--timeout", "--extract", "--list"):
        assert option in text
    assert "Examples:" in text and "captioner data subset" in text  # the manifest --subset reads


def test_cli_is_wired_into_captioner_data(capsys):
    assert download_main("--help") == 0
    assert "--remote" in capsys.readouterr().out
    parser = build_parser()
    assert parser.parse_args(["data", "download"]).run is download_cli.run
    # -v works on either side of the subcommand, and the action's own -v does not undo the top-level one.
    assert parser.parse_args(["-v", "data", "download"]).verbose
    assert parser.parse_args(["data", "download", "-v"]).verbose
    assert not parser.parse_args(["data", "download"]).verbose


def test_cli_list_prints_the_archive_table(capsys):
    assert download_main("--list") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(dl.COCO_FILES)
    assert any(line.startswith("val2017 ") and dl.COCO_FILES["val2017"].url in line for line in lines)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--year", "1999"], "argument --year: invalid choice"),
        (["--timeout", "0"], "argument --timeout: expected a number above 0"),
        (["--retries", "-1"], "argument --retries: expected a number of at least 0"),
        (["--remote"], "--remote needs --subset MANIFEST (the images to fetch)"),
        (["--subset", "m.json", "--split", "train", "val"], "--subset works on one image archive at a time"),
        (["--base-url", "ftp://example.org", "--list"], "--base-url must start with http:// or https://"),
    ],
)
def test_cli_usage_errors_are_one_line_exit_2(capsys, args, message):
    assert download_main(*args) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines


def test_cli_bad_manifest_is_one_error_line(tmp_path, capsys):
    manifest = tmp_path / "m.json"
    manifest.write_text("{not json")
    assert download_main("--subset", str(manifest), "--remote", "--no-progress", "--out", str(tmp_path)) == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: manifest") and "not valid JSON" in lines[0]
    manifest.write_text(json.dumps({"images": []}))
    assert download_main("--subset", str(manifest), "--remote", "--no-progress", "--out", str(tmp_path)) == 1
    assert error_lines(capsys) == [f"error: manifest {manifest} lists no images; nothing to fetch"]


def test_cli_unusable_out_is_one_error_line(server, tmp_path, capsys):
    server.files["/zips/val2017.zip"] = payload(1000, seed=12)
    out = tmp_path / "a-file"
    out.write_bytes(b"")
    assert download_main("--no-annotations", "--base-url", server.base, "--out", str(out), "--no-progress") == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and str(out) in lines[0] and "check --out" in lines[0], lines
    assert server.requests == []


def test_cli_remote_subset(server, coco_zip, tmp_path, capsys):
    path, originals = coco_zip
    server.files["/zips/val2017.zip"] = path.read_bytes()
    chosen = pick(originals)
    manifest = write_manifest(tmp_path / "m.json", chosen)
    args = ["--subset", str(manifest), "--remote", "--no-annotations", "--base-url", server.base]
    assert download_main(*args, "--out", str(tmp_path / "coco"), "--no-progress") == 0
    for name in chosen:
        assert (tmp_path / "coco" / name).read_bytes() == originals[name]
    out = capsys.readouterr().out
    assert "5 files written" in out and "bytes transferred" in out


def test_cli_local_subset(server, coco_zip, tmp_path, capsys, monkeypatch):
    path, originals = coco_zip
    raw = path.read_bytes()
    server.files["/zips/val2017.zip"] = raw
    monkeypatch.setitem(dl.COCO_FILES, "val2017", dl.CocoFile(dl.COCO_FILES["val2017"].url, len(raw), md5(raw)))
    chosen = pick(originals)
    manifest = write_manifest(tmp_path / "m.json", chosen)
    out = tmp_path / "coco"
    args = ["--subset", str(manifest), "--no-annotations", "--base-url", server.base, "--out", str(out)]
    assert download_main(*args, "--no-progress") == 0
    assert (out / "val2017.zip").read_bytes() == raw
    assert sorted(p.name for p in (out / "val2017").iterdir()) == sorted(Path(n).name for n in chosen)
    assert "5 files written" in capsys.readouterr().out


def test_cli_downloads_what_data_subset_selected(server, coco_zip, tmp_path, capsys):
    """The manifest.json of ``captioner data subset`` is what ``--subset`` reads."""
    path, originals = coco_zip
    server.files["/zips/val2017.zip"] = path.read_bytes()
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 4, "height": 4} for i in range(1, 40)]
    anns = [{"id": 100 + i, "image_id": i, "caption": f"picture {i}"} for i in range(1, 40)]
    captions = tmp_path / "captions_val2017.json"
    captions.write_text(json.dumps({"images": images, "annotations": anns}))
    assert main(["data", "subset", str(captions), str(tmp_path / "subset"), "--count", "6", "--seed", "2"]) == 0
    manifest = tmp_path / "subset" / "manifest.json"
    chosen = [f"val2017/{entry['file_name']}" for entry in json.loads(manifest.read_text())["images"]]
    assert len(chosen) == 6
    args = ["--subset", str(manifest), "--remote", "--no-annotations", "--base-url", server.base]
    assert download_main(*args, "--out", str(tmp_path / "coco"), "--no-progress") == 0
    assert sorted(p.name for p in (tmp_path / "coco" / "val2017").iterdir()) == sorted(Path(n).name for n in chosen)
    for name in chosen:
        assert (tmp_path / "coco" / name).read_bytes() == originals[name]
    assert "6 files written" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------- script


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_script_bad_argument_is_one_error_line():
    result = run_script("--year", "1999")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--year" in lines[0], result.stderr


def test_script_unreachable_url_is_one_error_line(tmp_path):
    base = f"http://127.0.0.1:{closed_port()}"
    result = run_script("--base-url", base, "--no-annotations", "--retries", "0", "--no-progress",
                        "--out", str(tmp_path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "127.0.0.1" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_script_remote_subset(server, coco_zip, tmp_path):
    path, originals = coco_zip
    server.files["/zips/val2017.zip"] = path.read_bytes()
    chosen = pick(originals, 2)
    manifest = write_manifest(tmp_path / "m.json", chosen)
    result = run_script("--subset", str(manifest), "--remote", "--no-annotations", "--base-url", server.base,
                        "--out", str(tmp_path / "coco"), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "2 files written" in result.stdout
    for name in chosen:
        assert (tmp_path / "coco" / name).read_bytes() == originals[name]
