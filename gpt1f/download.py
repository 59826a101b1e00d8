"""Finding and downloading the original release files (weights and BPE vocabulary).

A missing file is fetched from ``base_url + name`` into ``name.part`` (resumed with an HTTP Range
request when a partial file is there), checked against its git-blob SHA-1, and only then renamed into
place, so a file under its real name has always been verified once. Processes fetching into one
folder take turns (an exclusive ``flock`` on the folder): the second finds the first's verified file.
A download slower than ``MIN_RATE_BYTES_S`` over ``RATE_WINDOW_S`` fails naming the URL; a disk
error while saving it is reported as one (an OSError, not retried), never as a lost connection.

Files in place are verified too, once: :func:`verify_files` hashes a file whose size, mtime or inode
is not in the folder's stamp (``.gpt1f-verified.json``), and records it there, so later loads stay
fast. The expected hashes are the release's (``RELEASE_SHA1``), overridden by the folder's
``gpt1f-manifest.json`` (written last by ``save_openai``) or by an explicit ``checksums``.
Only the standard library's urllib is used.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import pathlib
import time
import urllib.error
import urllib.request

DEFAULT_BASE_URL = "https://raw.githubusercontent.com/openai/finetune-transformer-lm/master/model/"

SHARD_NAMES = tuple(f"params_{n}.npy" for n in range(10))
SHAPES_NAME = "params_shapes.json"
WEIGHT_NAMES = (SHAPES_NAME, *SHARD_NAMES)
VOCAB_NAMES = ("encoder_bpe_40000.json", "vocab_40000.bpe")

# git-blob SHA-1 (what `git hash-object FILE` prints) of every file in the release's model/ folder.
RELEASE_SHA1 = {
    "encoder_bpe_40000.json": "9dc3f0af5a80956e57dc8d9401e16dfadcade7c2",
    "vocab_40000.bpe": "0023a687b3d4d0b795a5e97cc914bdabb5a253df",
    "params_shapes.json": "29fac299ae848d7e447be84a33345edcf1b5353c",
    "params_0.npy": "84d83ac1f1cc878f56f33b167482c184491875d2",
    "params_1.npy": "0f19f4d4cda3d8f908e3faffd2cb2a8b9a4039da",
    "params_2.npy": "25bc19c72fdff69505a828ec6d73b32063532148",
    "params_3.npy": "5b2e6958d42a930966c9d602a012eb846ca67c83",
    "params_4.npy": "87ad158987e307e6aa64952610f466d750b73bc7",
    "params_5.npy": "74f3853316bba327229605dbedfe921996f11448",
    "params_6.npy": "5ef44e40bc076d0c9686d1273d54cbc16c3f0980",
    "params_7.npy": "d8d5c8d3bee9b20a677605ac1fe6c7af4df57c94",
    "params_8.npy": "f980f4b393716f396ae5ae6401708dcf4f270dc9",
    "params_9.npy": "d389eb2074dd74754444b8062aba78b49f6a9053",
}

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60
MIN_RATE_BYTES_S = 1024   # slower than this, averaged over RATE_WINDOW_S, fails the download
RATE_WINDOW_S = 60.0
STAMP_NAME = ".gpt1f-verified.json"
MANIFEST_NAME = "gpt1f-manifest.json"


class ChecksumError(ValueError):
    """A downloaded file's git-blob SHA-1 differs from the expected one."""


class DownloadError(OSError):
    """A file could not be downloaded (network error, HTTP error, connection dropped)."""


def repo_root() -> pathlib.Path:
    """The checkout's root: the folder holding the ``gpt1f`` package."""
    return pathlib.Path(__file__).resolve().parents[1]


def weights_dir(path=None) -> pathlib.Path:
    """Where release files live: ``path``, else ``$GPT1F_WEIGHTS``, else ``<repo root>/weights``."""
    if path is not None:
        return pathlib.Path(path).expanduser()
    env = os.environ.get("GPT1F_WEIGHTS")
    if env:
        return pathlib.Path(env).expanduser()
    return repo_root() / "weights"


def resolve_base_url(base_url: str | None = None) -> str:
    """``base_url``, else ``$GPT1F_BASE_URL``, else the original repository; always ends in '/'."""
    url = base_url or os.environ.get("GPT1F_BASE_URL") or DEFAULT_BASE_URL
    return url if url.endswith("/") else url + "/"


def git_blob_sha1(path: pathlib.Path) -> str:
    """SHA-1 of ``b"blob <size>\\0" + content``, the id git gives the file."""
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(names, directory, *, base_url: str | None = None, download: bool = True,
          progress: bool = True, checksums: dict[str, str] | None = None,
          retries: int = 2, verify: bool = True) -> pathlib.Path:
    """Make sure every file in ``names`` exists in ``directory``, verified; return ``directory``.

    Missing files are downloaded from ``base_url + name`` (see ``resolve_base_url``) and verified
    against ``checksums`` (name -> git-blob SHA-1, either case; None means :func:`checksum_table`:
    the release's, or the folder's manifest). A dropped connection is resumed from ``name.part`` up
    to ``retries`` more times; a later call resumes too. With ``verify``, files already in place are
    checked as well (see :func:`verify_files`). Raises FileNotFoundError when files are missing and
    ``download`` is False, DownloadError when the network fails, ChecksumError on a mismatch (a bad
    ``.part`` is deleted, a bad file in place is left for you to look at), OSError for disk errors.
    """
    directory = pathlib.Path(directory)
    url = resolve_base_url(base_url)
    table = checksum_table(directory, checksums)
    missing = [name for name in names if not (directory / name).is_file()]
    if missing and not download:
        raise FileNotFoundError(
            f"missing {', '.join(missing)} in {directory} and download=False; download "
            f"{' '.join(url + n for n in missing)} into {directory} (or set $GPT1F_WEIGHTS)")
    unknown = [name for name in missing if name not in table]
    if unknown:
        raise KeyError(f"no expected SHA-1 for {', '.join(unknown)}: cannot verify a download; "
                       f"pass checksums={{name: git_blob_sha1}} or place the files in {directory}")
    if missing:
        directory.mkdir(parents=True, exist_ok=True)
        with folder_lock(directory):
            for i, name in enumerate(missing):
                if (directory / name).is_file():      # another process fetched it meanwhile
                    continue
                try:
                    _download_verified(url + name, directory / name, table[name], progress, retries)
                except DownloadError as e:
                    left = " ".join(url + n for n in missing[i:])
                    raise DownloadError(f"{e}\nstill missing in {directory}: {left}") from e
                _record_verified(directory, {name: table[name]})
    if verify:
        verify_files(names, directory, table)
    return directory


@contextlib.contextmanager
def folder_lock(directory: pathlib.Path):
    """An exclusive ``flock`` on the folder itself (no lock file left behind); a no-op where
    ``fcntl`` is missing (Windows). Other processes block until it is released."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def checksum_table(directory: pathlib.Path, checksums: dict[str, str] | None = None) -> dict[str, str]:
    """Expected git-blob SHA-1s (lower case): ``checksums`` if given, else the release's
    ``RELEASE_SHA1`` updated by the folder's ``gpt1f-manifest.json``."""
    if checksums is not None:
        table = dict(checksums)
    else:
        table = {**RELEASE_SHA1, **read_manifest(pathlib.Path(directory))}
    bad = [name for name, sha in table.items() if not isinstance(sha, str)]
    if bad:
        raise ValueError(f"checksums for {', '.join(bad)} are not strings (expected hex SHA-1s)")
    return {name: sha.strip().lower() for name, sha in table.items()}


def read_manifest(directory: pathlib.Path) -> dict[str, str]:
    """``{name: sha1}`` from ``directory/gpt1f-manifest.json``; {} when there is none."""
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise ValueError("'files' must map names to SHA-1 strings")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a gpt1f manifest ({e!r}); delete it and save again") from None
    return files


def write_manifest(directory: pathlib.Path, files: dict[str, str]) -> None:
    """Write ``gpt1f-manifest.json`` atomically (temporary name, then one rename)."""
    path = directory / MANIFEST_NAME
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": "gpt1f-files-1", "files": files}, indent=1) + "\n")
    os.replace(tmp, path)


def _stat_key(path: pathlib.Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _read_stamp(directory: pathlib.Path) -> dict:
    try:
        stamp = json.loads((directory / STAMP_NAME).read_text(encoding="utf-8"))
        return stamp if isinstance(stamp, dict) else {}
    except (OSError, ValueError):
        return {}


def _record_verified(directory: pathlib.Path, verified: dict[str, str]) -> None:
    """Add ``{name: sha1}`` (just verified) with each file's size, mtime and inode to the stamp;
    a folder that cannot be written is left as it is (the files are hashed again next time)."""
    stamp = _read_stamp(directory)
    for name, sha in verified.items():
        stamp[name] = {"stat": _stat_key(directory / name), "sha1": sha}
    tmp = directory / f"{STAMP_NAME}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(stamp, indent=1) + "\n")
        os.replace(tmp, directory / STAMP_NAME)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def verify_files(names, directory, table: dict[str, str] | None = None) -> None:
    """Check every file of ``names`` that ``table`` knows (default: :func:`checksum_table`);
    a file whose size, mtime and inode match the stamp is not hashed again. Raises ChecksumError
    naming the first file that differs."""
    directory = pathlib.Path(directory)
    table = checksum_table(directory) if table is None else table
    stamp, verified = _read_stamp(directory), {}
    for name in names:
        path = directory / name
        if name not in table or not path.is_file():
            continue
        entry = stamp.get(name)
        if isinstance(entry, dict) and entry.get("stat") == _stat_key(path) \
                and entry.get("sha1") == table[name]:
            continue
        got = git_blob_sha1(path)
        if got != table[name]:
            source = ("its manifest" if name in read_manifest(directory) else "the release")
            raise ChecksumError(
                f"{path}: git-blob SHA-1 {got}, expected {table[name]} ({source}): the file is "
                "damaged, swapped or not the one expected (an interrupted save?); delete it to "
                "download it again, or save the folder again")
        verified[name] = got
    if verified:
        _record_verified(directory, verified)


def _download_verified(url: str, target: pathlib.Path, sha1: str, progress: bool,
                       retries: int) -> None:
    """Download ``url`` into ``target.part`` (resuming), check ``sha1``, rename to ``target``."""
    part = target.with_name(target.name + ".part")
    for attempt in range(retries + 1):
        try:
            _download_part(url, part, progress)
            break
        except DownloadError:
            if attempt == retries:
                raise
    got = git_blob_sha1(part)
    if got != sha1.lower():
        size = part.stat().st_size
        part.unlink()
        raise ChecksumError(f"{url}: downloaded {size} bytes with git-blob SHA-1 {got}, expected "
                            f"{sha1}; deleted {part}, nothing written to {target}")
    os.replace(part, target)


def _download_part(url: str, part: pathlib.Path, progress: bool) -> None:
    """Append the rest of ``url`` to ``part``; raises DownloadError if fewer bytes arrive."""
    from tqdm.auto import tqdm

    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left past the partial file: it is complete
            return
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason} (saving into {part.parent})") from e
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"cannot reach {url} ({e}); to work offline place {part.name[:-5]} "
                            f"in {part.parent} (or set $GPT1F_WEIGHTS)") from e
    with response:
        if offset and response.status != 206:  # server ignored the Range header: start over
            offset = 0
        total = _content_length(response, url, offset)
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                   desc=part.name[:-5], disable=not progress)
        try:
            received = _stream_into(response, part, offset, url, bar)
        finally:
            bar.close()
    if total is not None and received < total:
        raise DownloadError(f"{url}: connection closed after {received} of {total} bytes; "
                            f"kept {part}, fetching again resumes")


def _content_length(response, url: str, offset: int) -> int | None:
    """``offset`` + the response's Content-Length, None without one; DownloadError if malformed."""
    length = response.headers.get("Content-Length")
    if length is None:
        return None
    try:
        return offset + int(length)
    except ValueError:
        raise DownloadError(f"{url}: the server sent Content-Length {length!r}, not a number") from None


def _disk_error(e: OSError, part: pathlib.Path, url: str) -> OSError:
    return OSError(e.errno, f"{e.strerror or e}: cannot write {part} (downloading {url}); free "
                   "some space or choose a writable folder ($GPT1F_WEIGHTS)")


def _stream_into(response, part: pathlib.Path, offset: int, url: str, bar) -> int:
    """Append the body to ``part``; returns the bytes it holds. Network errors and a rate below
    ``MIN_RATE_BYTES_S`` raise DownloadError (resumable); disk errors raise OSError."""
    received = offset
    try:
        f = open(part, "ab" if offset else "wb")
    except OSError as e:
        raise _disk_error(e, part, url) from e
    window_start, window_bytes = time.monotonic(), 0
    with f:
        while True:
            try:
                chunk = response.read1(CHUNK_BYTES)
            except (OSError, ValueError, http.client.HTTPException) as e:  # IncompleteRead, reset
                raise DownloadError(f"{url}: connection lost after {received} bytes ({e!r}); "
                                    f"kept {part}, fetching again resumes") from e
            if not chunk:
                break
            try:
                f.write(chunk)
            except OSError as e:
                raise _disk_error(e, part, url) from e
            received += len(chunk)
            bar.update(len(chunk))
            window_bytes += len(chunk)
            elapsed = time.monotonic() - window_start
            if elapsed >= RATE_WINDOW_S:
                if window_bytes < MIN_RATE_BYTES_S * elapsed:
                    raise DownloadError(
                        f"{url}: {window_bytes / elapsed:.0f} bytes/s over the last {elapsed:.1f} s, "
                        f"below the minimum of {MIN_RATE_BYTES_S} bytes/s "
                        f"(gpt1f.download.MIN_RATE_BYTES_S); kept {part}, fetching again resumes")
                window_start, window_bytes = time.monotonic(), 0
    return received
