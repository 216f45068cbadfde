"""Download of the official dataset archives, verified against their published checksums."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


ARCHIVES = {
    # Krizhevsky's pages list these MD5 sums next to the files.
    "cifar10": Archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": Archive("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
    "stl10": Archive("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", "91f7769df0f17e558f3565bffb0c7dfb"),
}


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, md5: str, what: str, found: str | None = None) -> None:
    """Stop unless ``path`` has the published MD5 ``md5`` (``found``: its MD5, when already computed).

    A damaged or altered file is never read further.
    """
    found = found or file_md5(path)
    if found != md5:
        raise ValueError(
            f"{path} does not match the published checksum of {what} (MD5 {found}, expected {md5}): it is damaged "
            "or was altered; delete it and download it again from the official source"
        )


def download(url: str, destination: Path, md5: str, progress: bool = True) -> Path:
    """Fetch ``url`` to ``destination`` (via a ``.part`` file) and check its MD5; a mismatch deletes it."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {destination.name}", disable=not progress)
            with bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as err:
        partial.unlink(missing_ok=True)
        raise FileNotFoundError(
            f"cannot download {url} ({err}); put {destination.name} in {destination.parent} by hand"
        ) from None
    if digest.hexdigest() != md5:
        partial.unlink(missing_ok=True)
        raise ValueError(f"{destination.name} from {url} is corrupt (MD5 {digest.hexdigest()}, expected {md5}); try again")
    partial.replace(destination)
    return destination


def fetch(name: str, root: Path, progress: bool = True) -> Path:
    """The official archive of dataset ``name`` in ``root``, downloaded and verified if it is not there yet.

    An archive already there is verified by its reader before it is used (``verify``).
    """
    archive = ARCHIVES[name]
    path = Path(root) / archive.filename
    if path.exists():
        return path
    return download(archive.url, path, archive.md5, progress=progress)
