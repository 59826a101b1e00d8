"""Finding and downloading the original release files (weights and BPE vocabulary).

A missing file is fetched from ``base_url + name`` into ``name.part`` (resumed with an HTTP Range
request when a partial file is there), checked against its git-blob SHA-1, and only then renamed into
place, so a file under its real name has always been verified once. Files already in place are
trusted and not re-hashed. Only the standard library's urllib is used.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
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
          retries: int = 2) -> pathlib.Path:
    """Make sure every file in ``names`` exists in ``directory``; return ``directory``.

    Missing files are downloaded from ``base_url + name`` (see ``resolve_base_url``) and verified
    against ``checksums`` (name -> git-blob SHA-1; None means the release table ``RELEASE_SHA1``).
    A dropped connection is resumed from ``name.part`` up to ``retries`` more times; a later call
    resumes too. Raises FileNotFoundError when files are missing and ``download`` is False,
    DownloadError when the network fails, ChecksumError (the bad ``.part`` is deleted) on a mismatch.
    """
    directory = pathlib.Path(directory)
    url = resolve_base_url(base_url)
    table = RELEASE_SHA1 if checksums is None else checksums
    missing = [name for name in names if not (directory / name).is_file()]
    if not missing:
        return directory
    if not download:
        raise FileNotFoundError(
            f"missing {', '.join(missing)} in {directory} and download=False; download "
            f"{' '.join(url + n for n in missing)} into {directory} (or set $GPT1F_WEIGHTS)")
    unknown = [name for name in missing if name not in table]
    if unknown:
        raise KeyError(f"no expected SHA-1 for {', '.join(unknown)}: cannot verify a download; "
                       f"pass checksums={{name: git_blob_sha1}} or place the files in {directory}")
    directory.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(missing):
        try:
            _download_verified(url + name, directory / name, table[name], progress, retries)
        except DownloadError as e:
            left = " ".join(url + n for n in missing[i:])
            raise DownloadError(f"{e}\nstill missing in {directory}: {left}") from e
    return directory


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
    if got != sha1:
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
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        received = offset
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                   desc=part.name[:-5], disable=not progress)
        try:
            with open(part, "ab" if offset else "wb") as f:
                while chunk := response.read(CHUNK_BYTES):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (OSError, ValueError, http.client.HTTPException) as e:  # IncompleteRead, reset
            raise DownloadError(f"{url}: connection lost after {received} bytes ({e!r}); "
                                f"kept {part}, fetching again resumes") from e
        finally:
            bar.close()
    if total is not None and received < total:
        raise DownloadError(f"{url}: connection closed after {received} of {total} bytes; "
                            f"kept {part}, fetching again resumes")
