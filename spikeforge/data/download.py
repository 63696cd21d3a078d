"""Fetching a file over HTTP(S) with a progress bar and an MD5 check."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from tqdm import tqdm

from spikeforge.data.errors import DatasetError
from spikeforge.runtime import atomic_open

_CHUNK = 1 << 20


def download(url: str, dest: str | os.PathLike, md5: str | None, timeout: float = 60.0) -> Path:
    """Stream ``url`` into ``dest`` (atomically: an interrupted or failed download leaves no
    file behind), showing a progress bar on a terminal and hashing as it goes.

    Args:
        url: where to fetch from.
        dest: the file to create; its folder is created if needed.
        md5: expected hex digest, or ``None`` to skip the check.
        timeout: seconds to wait for the connection and for each read.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DatasetError: the download's MD5 differs from ``md5`` (nothing is kept).
        OSError: the server cannot be reached or the transfer fails (``urllib.error.URLError``
            and ``TimeoutError`` are both ``OSError``).
    """
    dest = Path(dest)
    digest = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with atomic_open(dest) as out, tqdm(total=total, unit="B", unit_scale=True,
                                            unit_divisor=1024, desc=dest.name,
                                            disable=None, leave=False) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
            if md5 is not None and digest.hexdigest() != md5.lower():
                raise DatasetError(f"{dest}: downloaded from {url} but its MD5 is "
                                   f"{digest.hexdigest()}, expected {md5}; the file was deleted. "
                                   "Try again, or fetch it by hand from another mirror.")
    return dest
