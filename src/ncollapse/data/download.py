"""Fetching the MNIST / Fashion-MNIST IDX files from a mirror, verified by SHA-256."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
import warnings
import zlib
from pathlib import Path

from tqdm.auto import tqdm

from ncollapse.data.idx import IDX_FILES, find_idx_file, maybe_gunzip, parse_idx
from ncollapse.data.roots import default_root
from ncollapse.io import atomic_write_bytes
from ncollapse.validation import user_stacklevel

__all__ = ["FASHION_MNIST_MIRROR", "IDX_SHA256", "MNIST_MIRROR", "ChecksumError",
           "DownloadError", "download_idx"]

FASHION_MNIST_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_MIRRORS = {
    "fashion-mnist": (FASHION_MNIST_MIRROR, "NCOLLAPSE_FASHION_MNIST_MIRROR"),
    "mnist": (MNIST_MIRROR, "NCOLLAPSE_MNIST_MIRROR"),
}
#: SHA-256 of the *decompressed* IDX files (gzip re-compression changes the .gz bytes but
#: not these). Fashion-MNIST: computed from Debian's dataset-fashion-mnist files, whose
#: contents are the canonical ones (60000/10000 images of 28×28). MNIST: no copy was at hand
#: to compute the digests from, so none are listed; a download then warns and prints the
#: digests it computed, and ``sha256=`` supplies them.
IDX_SHA256: dict[str, dict[str, str]] = {
    "fashion-mnist": {
        "train-images-idx3-ubyte":
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte":
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte":
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte":
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    "mnist": {},
}


class DownloadError(RuntimeError):
    """A file could not be fetched (network, HTTP or mirror problem)."""


class ChecksumError(ValueError):
    """A file's SHA-256 differs from the known digest."""


def _sha256_raw(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(maybe_gunzip(fh.read())).hexdigest()


def download_idx(name: str, root: str | os.PathLike | None = None, *, mirror: str | None = None,
                 sha256: dict[str, str] | None = None, timeout: float = 60.0) -> Path:
    """Fetch the four IDX files of ``mnist`` or ``fashion-mnist`` into ``root``; return root.

    Files already present with the right digest are kept. Each file is fetched as
    ``<mirror>/<file>.gz``; the mirror is ``mirror``, else the environment variable
    ``NCOLLAPSE_MNIST_MIRROR`` / ``NCOLLAPSE_FASHION_MNIST_MIRROR``, else
    ``MNIST_MIRROR`` / ``FASHION_MNIST_MIRROR``. The SHA-256 of the decompressed content
    must match ``sha256`` (``{file name without .gz: hex digest}``) or else
    :data:`IDX_SHA256`; a file without a known digest is accepted after it parses as IDX, with
    a warning that prints its digest. Files are written atomically, nothing on a mismatch
    (:class:`ChecksumError`); network failures raise :class:`DownloadError`.
    """
    if name not in _MIRRORS:
        raise ValueError(f"download_idx serves {', '.join(_MIRRORS)}; got {name!r}")
    root = Path(root) if root is not None else default_root(name)
    default_mirror, env = _MIRRORS[name]
    base_url = (mirror or os.environ.get(env) or default_mirror).rstrip("/") + "/"
    digests = dict(IDX_SHA256[name])
    digests.update(sha256 or {})
    for base in (*IDX_FILES["train"], *IDX_FILES["test"]):
        expected = digests.get(base)
        existing = find_idx_file(root, base)
        if existing is not None and (expected is None or _sha256_raw(existing) == expected):
            continue
        url = base_url + base + ".gz"
        payload = _fetch(url, root, timeout)
        try:
            raw = maybe_gunzip(payload)
        except (OSError, EOFError, zlib.error) as exc:
            raise ChecksumError(f"{url}: not valid gzip data ({exc}); nothing was written. "
                                f"Retry, use another mirror ({env}) or place the files in "
                                f"{root} manually") from exc
        got = hashlib.sha256(raw).hexdigest()
        if expected is None:
            parse_idx(raw, url)
            warnings.warn(f"{url}: no known SHA-256 to verify against; the file parses as IDX "
                          f"and its decompressed SHA-256 is {got}", stacklevel=user_stacklevel())
        elif got != expected:
            raise ChecksumError(
                f"checksum mismatch for {url}: expected SHA-256 {expected} of the decompressed "
                f"file, got {got}; nothing was written. The download is corrupt or the mirror "
                f"serves other files: retry, use another mirror ({env}) or place the files in "
                f"{root} manually"
            )
        try:
            if existing is not None and existing.name == base:
                existing.unlink()  # a stale uncompressed copy would shadow the new file
            atomic_write_bytes(root / f"{base}.gz", payload)
        except OSError as exc:
            raise DownloadError(f"download failed: cannot write to {root} ({exc}); pass a "
                                "writable root= or place the files there manually") from exc
    return root


def _fetch(url: str, root: Path, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            chunks = []
            with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                      disable=None, leave=False) as bar:
                while chunk := resp.read(1 << 16):
                    chunks.append(chunk)
                    bar.update(len(chunk))
            return b"".join(chunks)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise DownloadError(f"download failed: {url}: {exc}; place the files in {root} "
                            "manually") from exc
