"""The data layer: real MNIST / Fashion-MNIST / CIFAR-10 files, small files written here in the
real CIFAR-100 / SVHN / CIFAR-10 formats, integrity errors, downloads from a local server,
and batching with augmentation."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import pickle
import socket
import struct
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from spikeforge.data import (
    DATASETS,
    Augment,
    BatchLoader,
    DatasetError,
    ImageDataset,
    catalog,
    load_dataset,
    resolve_root,
)
from spikeforge.data.download import download
from spikeforge.data.idx import write_idx

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Small tensor ops on a shared, busy machine run far faster without intra-op threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- helpers writing real formats

def write_mnist(raw: Path, prefix: str, images: np.ndarray, labels: np.ndarray,
                gz: bool = True) -> list[Path]:
    """Write an MNIST-style IDX pair (``prefix`` is ``train`` or ``t10k``)."""
    raw.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
        data = write_idx(array.astype(np.uint8))
        path = raw / f"{prefix}-{kind}-ubyte{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
        paths.append(path)
    return paths


def tiny_mnist(n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10


def cifar_batch(n: int, num_classes: int, seed: int, label_key: str) -> dict:
    """A batch dict with the keys of the original release (CIFAR-100 adds coarse labels)."""
    rng = np.random.default_rng(seed)
    batch = {"batch_label": f"batch {seed}",
             "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             label_key: [int(v) for v in rng.integers(0, num_classes, n)],
             "filenames": [f"img_{seed}_{i}.png" for i in range(n)]}
    if label_key == "fine_labels":
        batch["coarse_labels"] = [v // 5 for v in batch[label_key]]
    return batch


def write_cifar10_folder(root: Path, n: int = 4) -> dict[str, dict]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": cifar_batch(n, 10, i, "labels") for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(n, 10, 9, "labels")
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": n, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


def write_tar_gz(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def pixel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, exactly, from pixel histograms."""
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].flatten(), minlength=256).double()
        hist /= hist.sum()
        mean = float((hist * values).sum())
        means.append(mean)
        stds.append(float((hist * values**2).sum() - mean**2) ** 0.5)
    return means, stds


def expected_paths(message: str) -> list[str]:
    return [line.split()[0] for line in message.splitlines() if line.startswith("  ")]


# --------------------------------------------------------------------------- real data sets

@pytest.fixture(scope="module")
def mnist_train(real_data_root: Path) -> ImageDataset:
    return load_dataset("mnist", "train", root=real_data_root, download=False)


@pytest.fixture(scope="module")
def mnist_test(real_data_root: Path) -> ImageDataset:
    return load_dataset("mnist", "test", root=real_data_root, download=False)


@pytest.fixture(scope="module")
def cifar10_train(real_data_root: Path) -> ImageDataset:
    return load_dataset("cifar10", "train", root=real_data_root, download=False)


def test_mnist_train(mnist_train: ImageDataset) -> None:
    d = mnist_train
    assert d.images.shape == (60000, 1, 28, 28) and d.images.dtype == torch.uint8
    assert d.images.is_contiguous() and d.labels.dtype == torch.int64
    assert (d.num_classes, d.in_channels, d.image_size) == (10, 1, (28, 28))
    assert d.labels.bincount().tolist() == MNIST_TRAIN_COUNTS
    mean, std = pixel_stats(d.images)
    assert mean == pytest.approx([0.1307], abs=5e-5) and std == pytest.approx([0.3081], abs=5e-5)
    assert d.mean == (0.1307,) and d.std == (0.3081,)


def test_mnist_test(mnist_test: ImageDataset) -> None:
    assert mnist_test.images.shape == (10000, 1, 28, 28)
    assert mnist_test.labels.bincount().tolist() == MNIST_TEST_COUNTS
    assert mnist_test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert pixel_stats(mnist_test.images)[0] == pytest.approx([0.1325], abs=5e-5)


def test_fashion_mnist(real_data_root: Path) -> None:
    train = load_dataset("fashion_mnist", "train", root=real_data_root, download=False)
    test = load_dataset("fashion_mnist", "test", root=real_data_root, download=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [6000] * 10
    assert test.labels.bincount().tolist() == [1000] * 10
    assert pixel_stats(train.images)[0] == pytest.approx([0.2860], abs=5e-5)
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"


def test_cifar10_from_archive(cifar10_train: ImageDataset, real_data_root: Path) -> None:
    d = cifar10_train
    assert d.images.shape == (50000, 3, 32, 32) and d.images.is_contiguous()
    assert d.labels.bincount().tolist() == [5000] * 10
    assert d.classes == CIFAR10_CLASSES
    mean, std = pixel_stats(d.images)
    assert mean == pytest.approx([0.4913, 0.4821, 0.4465], abs=5e-4)
    assert std == pytest.approx([0.2452, 0.2428, 0.2606], abs=5e-4)  # JPEG-decoded: see README
    assert (d.in_channels, d.image_size, len(d.mean)) == (3, (32, 32), 3)
    test = load_dataset("cifar10", "test", root=real_data_root, download=False)
    assert test.images.shape == (10000, 3, 32, 32)
    assert test.labels.bincount().tolist() == [1000] * 10


def test_mnist_demo_is_a_balanced_subset_of_mnist(mnist_train: ImageDataset,
                                                  mnist_test: ImageDataset) -> None:
    for split, full, per_class in (("train", mnist_train, 600), ("test", mnist_test, 100)):
        demo = load_dataset("mnist_demo", split, root="/nonexistent", download=False)
        assert demo.images.shape == (10 * per_class, 1, 28, 28)
        assert demo.labels.bincount().tolist() == [per_class] * 10
        assert (demo.mean, demo.std) == (full.mean, full.std)
        source = {img.numpy().tobytes(): int(lab)
                  for img, lab in zip(full.images, full.labels, strict=True)}
        found = [source.get(img.numpy().tobytes()) for img in demo.images]
        assert found == demo.labels.tolist()  # every image is in MNIST, with its label


# ------------------------------------------------------------- files written in the real formats

def test_mnist_reads_uncompressed_files(tmp_path: Path) -> None:
    images, labels = tiny_mnist(12)
    write_mnist(tmp_path / "MNIST" / "raw", "t10k", images, labels, gz=False)
    d = load_dataset("mnist", "test", root=tmp_path, download=False)
    assert torch.equal(d.images[:, 0], torch.from_numpy(images))
    assert d.labels.tolist() == labels.tolist()


def test_cifar10_from_extracted_folder(tmp_path: Path) -> None:
    batches = write_cifar10_folder(tmp_path, n=4)
    train = load_dataset("cifar10", "train", root=tmp_path, download=False)
    assert train.images.shape == (20, 3, 32, 32)
    expected = np.concatenate([batches[f"data_batch_{i}"]["data"] for i in range(1, 6)])
    # the 3072 values are 1024 red, 1024 green, 1024 blue, each row-major 32x32
    assert torch.equal(train.images[5, 1, 2, 3], torch.tensor(expected[5, 1024 + 2 * 32 + 3]))
    assert torch.equal(train.images.reshape(20, -1), torch.from_numpy(expected))
    test = load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert test.labels.tolist() == batches["test_batch"]["labels"]
    assert test.classes == CIFAR10_CLASSES


@pytest.mark.parametrize("where", ["", "CIFAR100"])
def test_cifar100_from_archive(tmp_path: Path, where: str) -> None:
    train, test = cifar_batch(30, 100, 1, "fine_labels"), cifar_batch(10, 100, 2, "fine_labels")
    names = [f"class_{i}" for i in range(100)]
    meta = {"fine_label_names": names, "coarse_label_names": [f"super_{i}" for i in range(20)]}
    write_tar_gz(tmp_path / where / "cifar-100-python.tar.gz", {
        f"cifar-100-python/{name}": pickle.dumps(obj, protocol=2)
        for name, obj in (("meta", meta), ("test", test), ("train", train))})
    d = load_dataset("cifar100", "train", root=tmp_path, download=False)
    assert d.images.shape == (30, 3, 32, 32) and d.num_classes == 100
    assert d.labels.tolist() == train["fine_labels"]
    assert torch.equal(d.images.reshape(30, -1), torch.from_numpy(train["data"]))
    assert d.classes == tuple(names) and len(d.mean) == 3
    t = load_dataset("cifar100", "test", root=tmp_path, download=False)
    assert t.labels.tolist() == test["fine_labels"]


@pytest.mark.parametrize("where", ["SVHN", ""])
def test_svhn_from_mat(tmp_path: Path, where: str) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 3, 7), dtype=np.uint8)
    y = np.array([[10], [1], [2], [10], [9], [5], [3]], dtype=np.uint8)
    (tmp_path / where).mkdir(exist_ok=True)
    scipy_io.savemat(tmp_path / where / "test_32x32.mat", {"X": x, "y": y})
    d = load_dataset("svhn", "test", root=tmp_path, download=False)
    assert d.images.shape == (7, 3, 32, 32) and d.images.is_contiguous()
    assert d.labels.tolist() == [0, 1, 2, 0, 9, 5, 3]
    assert d.images[4, 2, 5, 6].item() == x[5, 6, 2, 4]  # (N, C, H, W) from (H, W, C, N)
    assert torch.equal(d.images, torch.from_numpy(x).permute(3, 2, 0, 1))


def test_truncated_svhn(tmp_path: Path) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    path = tmp_path / "train_32x32.mat"
    x = np.zeros((32, 32, 3, 40), dtype=np.uint8)
    scipy_io.savemat(path, {"X": x, "y": np.ones((40, 1), dtype=np.uint8)})
    path.write_bytes(path.read_bytes()[:60_000])
    with pytest.raises(DatasetError, match="truncated or corrupt") as err:
        load_dataset("svhn", "train", root=tmp_path, download=False)
    assert str(path) in str(err.value)


def test_svhn_without_scipy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(DatasetError, match=r"pip install spikeforge\[svhn\]"):
        load_dataset("svhn", "train", root=tmp_path, download=False)


# ------------------------------------------------------------------------------ integrity errors

def test_truncated_gzip(tmp_path: Path) -> None:
    images_path, _ = write_mnist(tmp_path / "MNIST" / "raw", "t10k", *tiny_mnist(50))
    data = images_path.read_bytes()
    images_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated or corrupt") as err:
        load_dataset("mnist", "test", root=tmp_path, download=False)
    assert str(images_path) in str(err.value) and "delete it" in str(err.value)


def test_corrupt_gzip_crc(tmp_path: Path) -> None:
    _, labels_path = write_mnist(tmp_path / "MNIST" / "raw", "t10k", *tiny_mnist(50))
    data = bytearray(labels_path.read_bytes())
    data[-8] ^= 0xFF  # the stored CRC32
    labels_path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=str(labels_path)):
        load_dataset("mnist", "test", root=tmp_path, download=False)


@pytest.mark.parametrize("cut", [10, 3])
def test_uncompressed_file_shorter_than_header(tmp_path: Path, cut: int) -> None:
    images_path, _ = write_mnist(tmp_path / "MNIST" / "raw", "train", *tiny_mnist(5), gz=False)
    images_path.write_bytes(images_path.read_bytes()[:-cut] if cut > 4 else b"\0\0\x08")
    with pytest.raises(DatasetError, match="truncated or corrupt") as err:
        load_dataset("mnist", "train", root=tmp_path, download=False)
    assert str(images_path) in str(err.value)


def test_impossible_idx_header(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(raw, "t10k", *tiny_mnist(3), gz=False)
    header = struct.pack(">4i", 2051, 2**31 - 1, 2**20, 2**20)  # petabytes, in a tiny file
    (raw / "t10k-images-idx3-ubyte").write_bytes(header + bytes(100))
    with pytest.raises(DatasetError, match="impossible size|file ends after 100"):
        load_dataset("mnist", "test", root=tmp_path, download=False)


def test_trailing_data_is_an_error(tmp_path: Path) -> None:
    _, labels_path = write_mnist(tmp_path / "MNIST" / "raw", "train", *tiny_mnist(5), gz=False)
    labels_path.write_bytes(labels_path.read_bytes() + b"\0")
    with pytest.raises(DatasetError, match="more data than its header"):
        load_dataset("mnist", "train", root=tmp_path, download=False)


def test_wrong_idx_magic(tmp_path: Path) -> None:
    images, labels = tiny_mnist(5)
    raw = tmp_path / "FashionMNIST" / "raw"
    images_path, labels_path = write_mnist(raw, "t10k", images, labels)
    images_path.write_bytes(labels_path.read_bytes())  # a label file where images belong
    with pytest.raises(DatasetError, match="magic number is 2049, expected 2051") as err:
        load_dataset("fashion_mnist", "test", root=tmp_path, download=False)
    assert str(images_path) in str(err.value)


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    images, labels = tiny_mnist(10)
    write_mnist(raw, "t10k", images, labels[:9])
    with pytest.raises(DatasetError, match="10 images but .* 9 labels"):
        load_dataset("mnist", "test", root=tmp_path, download=False)


def test_label_out_of_range(tmp_path: Path) -> None:
    images, labels = tiny_mnist(10)
    labels[3] = 12
    write_mnist(tmp_path / "MNIST" / "raw", "t10k", images, labels)
    with pytest.raises(DatasetError, match="label 12 is outside 0..9"):
        load_dataset("mnist", "test", root=tmp_path, download=False)


def test_truncated_cifar_archive(tmp_path: Path) -> None:
    archive = tmp_path / "CIFAR10" / "cifar-10-python.tar.gz"
    batch = pickle.dumps(cifar_batch(200, 10, 0, "labels"), protocol=2)
    write_tar_gz(archive, {"cifar-10-batches-py/test_batch": batch})
    archive.write_bytes(archive.read_bytes()[:4000])
    with pytest.raises(DatasetError, match="truncated or corrupt") as err:
        load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert str(archive) in str(err.value)


def test_cifar_archive_missing_member(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_tar_gz(archive, {"cifar-10-batches-py/test_batch": b"x"})
    with pytest.raises(DatasetError, match="no cifar-10-batches-py/batches.meta"):
        load_dataset("cifar10", "test", root=tmp_path, download=False)


def test_cifar_bad_batches(tmp_path: Path) -> None:
    write_cifar10_folder(tmp_path, n=4)
    folder = tmp_path / "cifar-10-batches-py"
    bad = cifar_batch(4, 10, 0, "labels")
    bad["data"] = bad["data"][:, :3000]
    (folder / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DatasetError, match=r"shape \(n, 3072\)"):
        load_dataset("cifar10", "test", root=tmp_path, download=False)
    bad = cifar_batch(4, 10, 0, "labels")
    bad["labels"] = bad["labels"][:3]
    (folder / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DatasetError, match="4 images but 3 'labels'"):
        load_dataset("cifar10", "test", root=tmp_path, download=False)
    (folder / "test_batch").write_bytes(pickle.dumps(bad, protocol=2)[:100])
    with pytest.raises(DatasetError, match="cannot unpickle"):
        load_dataset("cifar10", "test", root=tmp_path, download=False)


class _Exploit:
    def __reduce__(self):
        return (eval, ("1",))


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    write_cifar10_folder(tmp_path, n=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(
        pickle.dumps({"data": _Exploit()}, protocol=2))
    with pytest.raises(DatasetError, match="unexpected object .*eval"):
        load_dataset("cifar10", "test", root=tmp_path, download=False)


# ------------------------------------------------------------------ missing files and downloads

def test_missing_files_listed(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", "train", root=tmp_path, download=False)
    message = str(err.value)
    raw = tmp_path / "MNIST" / "raw"
    assert expected_paths(message) == [str(raw / "train-images-idx3-ubyte.gz"),
                                       str(raw / "train-labels-idx1-ubyte.gz")]
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in message
    assert "--data-root" in message and "SPIKEFORGE_DATA" in message
    assert "download=False" in message.splitlines()[0]


def test_only_missing_files_listed(tmp_path: Path) -> None:
    images, labels = tiny_mnist(5)
    write_mnist(tmp_path / "MNIST" / "raw", "t10k", images, labels)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", "test", root=tmp_path, download=False)
    assert expected_paths(str(err.value)) == [
        str(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz")]


@pytest.mark.parametrize("name, expected", [
    ("cifar10", "CIFAR10/cifar-10-python.tar.gz"),
    ("cifar100", "CIFAR100/cifar-100-python.tar.gz"),
    ("svhn", "SVHN/test_32x32.mat"),
])
def test_missing_archive_listed(tmp_path: Path, name: str, expected: str) -> None:
    if name == "svhn":
        pytest.importorskip("scipy.io")
    with pytest.raises(DatasetError) as err:
        load_dataset(name, "test", root=tmp_path, download=False)
    assert expected_paths(str(err.value)) == [str(tmp_path / expected)]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(catalog.MIRRORS, "fashion_mnist", f"http://127.0.0.1:{_closed_port()}/")
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion_mnist", "test", root=tmp_path, download=True)
    message = str(err.value)
    raw = tmp_path / "FashionMNIST" / "raw"
    assert "downloading failed" in message.splitlines()[0]
    assert expected_paths(message) == [str(raw / "t10k-images-idx3-ubyte.gz"),
                                       str(raw / "t10k-labels-idx1-ubyte.gz")]
    assert "SPIKEFORGE_DATA" in message
    assert not raw.exists() or not any(raw.iterdir())


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def http_folder(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1, and its base URL."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_checks_md5(http_folder: tuple[Path, str], tmp_path: Path) -> None:
    folder, base = http_folder
    payload = np.random.default_rng(0).bytes(300_000)
    (folder / "blob.bin").write_bytes(payload)
    md5 = hashlib.md5(payload).hexdigest()
    dest = tmp_path / "cache" / "sub" / "blob.bin"
    assert download(base + "blob.bin", dest, md5) == dest
    assert dest.read_bytes() == payload

    wrong = "0" * 32
    other = tmp_path / "cache" / "other.bin"
    with pytest.raises(DatasetError) as err:
        download(base + "blob.bin", other, wrong)
    message = str(err.value)
    assert str(other) in message and wrong in message and md5 in message
    assert sorted(p.name for p in other.parent.iterdir()) == ["sub"]  # nothing left behind


def test_download_http_error_is_oserror(http_folder: tuple[Path, str], tmp_path: Path) -> None:
    _, base = http_folder
    with pytest.raises(OSError, match="404"):
        download(base + "absent.bin", tmp_path / "absent.bin", None)
    assert not (tmp_path / "absent.bin").exists()


def test_load_dataset_downloads(http_folder: tuple[Path, str], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder, base = http_folder
    images, labels = tiny_mnist(30)
    sums = {p.name: hashlib.md5(p.read_bytes()).hexdigest()
            for p in write_mnist(folder, "t10k", images, labels)}
    monkeypatch.setitem(catalog.MIRRORS, "mnist", base)
    monkeypatch.setitem(catalog.CHECKSUMS, "mnist", sums)
    root = tmp_path / "root"
    d = load_dataset("mnist", "test", root=root, download=True)
    assert torch.equal(d.images[:, 0], torch.from_numpy(images))
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == sorted(sums)

    monkeypatch.setitem(catalog.CHECKSUMS, "mnist", dict.fromkeys(sums, "f" * 32))
    with pytest.raises(DatasetError, match="expected f{32}"):
        load_dataset("mnist", "test", root=tmp_path / "other", download=True)


# ------------------------------------------------------------------------ names, splits, roots

def test_unknown_name_and_split() -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("imagenet")
    assert all(name in str(err.value) for name in DATASETS)
    with pytest.raises(DatasetError, match="'train' or 'test'"):
        load_dataset("mnist_demo", "valid")


def test_every_dataset_has_a_reader_and_statistics() -> None:
    assert DATASETS.names() == ["mnist", "fashion_mnist", "cifar10", "cifar100", "svhn",
                                "mnist_demo"]
    assert set(catalog.STATS) == set(DATASETS)


def test_resolve_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SPIKEFORGE_DATA", raising=False)
    assert resolve_root() == tmp_path / "home" / ".cache" / "spikeforge"
    monkeypatch.setenv("SPIKEFORGE_DATA", str(tmp_path / "env"))
    assert resolve_root() == tmp_path / "env"
    assert resolve_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_root("~/x") == tmp_path / "home" / "x"


# --------------------------------------------------------------------------------- ImageDataset

def synthetic(n: int = 10, channels: int = 1, size: int = 4) -> ImageDataset:
    """Image ``i`` is filled with the value ``i``, label ``i % 3``."""
    images = torch.arange(n).view(n, 1, 1, 1).expand(n, channels, size, size)
    return ImageDataset("toy", "train", images.to(torch.uint8), torch.arange(n) % 3,
                        ("a", "b", "c"), (0.5,) * channels, (0.25,) * channels)


def test_subset() -> None:
    d = synthetic(50)
    a, b, c = d.subset(20, seed=1), d.subset(20, seed=1), d.subset(20, seed=2)
    assert len(a) == 20 and torch.equal(a.images, b.images) and not torch.equal(a.labels, c.labels)
    index = a.images[:, 0, 0, 0].long()
    assert index.tolist() == sorted(set(index.tolist())) and torch.equal(a.labels, index % 3)
    assert a.name == "toy" and a.classes == d.classes
    with pytest.raises(DatasetError, match="has 50"):
        d.subset(51)


def test_dataset_validation() -> None:
    with pytest.raises(DatasetError, match="uint8"):
        ImageDataset("toy", "train", torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long),
                     ("a",), (0.5,), (0.5,))
    assert "10 images 1x4x4" in repr(synthetic())


# ---------------------------------------------------------------------------------- BatchLoader

def epoch_batches(loader: BatchLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def test_loader_reproducible(mnist_test: ImageDataset) -> None:
    d = mnist_test.subset(600)
    make = functools.partial(BatchLoader, d, 64, shuffle=True, seed=3,
                             augment=Augment(crop_padding=2, hflip=True, cutout=6))
    first = make()
    for epoch in range(3):
        epoch_batches(first, epoch)
    again = epoch_batches(first, 1)
    resumed = epoch_batches(make(), 1)  # a fresh loader, as after a restart
    assert len(again) == len(first) == 10
    for (x1, y1), (x2, y2) in zip(again, resumed, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = epoch_batches(first, 2)
    assert not torch.equal(other[0][1], again[0][1])
    assert not torch.equal(make(seed=4).indices(), make().indices())


def test_loader_normalisation(mnist_test: ImageDataset) -> None:
    loader = BatchLoader(mnist_test, 2500, channels_last=True)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [2500] * 4
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32 and batches[0][0].is_contiguous(
        memory_format=torch.channels_last)
    assert x.mean().item() == pytest.approx(0.0, abs=0.01)
    assert x.std().item() == pytest.approx(1.0, abs=0.01)
    manual = (mnist_test.images[:2500].float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(batches[0][0], manual, atol=1e-5)
    assert torch.equal(torch.cat([b[1] for b in batches]), mnist_test.labels)


def test_loader_normalisation_cifar(cifar10_train: ImageDataset) -> None:
    loader = BatchLoader(cifar10_train.subset(5000), 5000)
    x, _ = next(iter(loader))
    assert x.mean(dim=(0, 2, 3)).abs().max().item() < 0.03


def test_loader_last_batch() -> None:
    d = synthetic(10)
    assert [len(y) for _, y in BatchLoader(d, 4)] == [4, 4, 2]
    assert [len(y) for _, y in BatchLoader(d, 4, drop_last=True)] == [4, 4]
    assert len(BatchLoader(d, 4)) == 3 and len(BatchLoader(d, 4, drop_last=True)) == 2


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), world=st.integers(1, 5), batch=st.integers(1, 7),
       drop_last=st.booleans(), shuffle=st.booleans(), epoch=st.integers(0, 3))
def test_rank_shards(n: int, world: int, batch: int, drop_last: bool, shuffle: bool,
                     epoch: int) -> None:
    d = synthetic(n)
    loaders = [BatchLoader(d, batch, shuffle=shuffle, drop_last=drop_last, rank=r,
                           world_size=world, seed=5) for r in range(world)]
    shards = []
    for loader in loaders:
        loader.set_epoch(epoch)
        shards.append(loader.indices())
    assert len({len(loader) for loader in loaders}) == 1  # the same number of batches
    assert len({len(shard) for shard in shards}) == 1
    seen = torch.cat(shards)
    if drop_last:
        assert len(seen) == n - n % world and len(set(seen.tolist())) == len(seen)  # disjoint
    else:
        assert set(seen.tolist()) == set(range(n))  # covered, padded by at most world - 1
        assert len(seen) - n < world
    assert sum(len(y) for _, y in loaders[0]) == (len(loaders[0]) * batch if drop_last
                                                  else len(shards[0]))


def test_rank_shards_disjoint_cover_mnist(mnist_test: ImageDataset) -> None:
    shards = [BatchLoader(mnist_test, 100, shuffle=True, rank=r, world_size=4).indices()
              for r in range(4)]
    seen = torch.cat(shards).sort().values
    assert torch.equal(seen, torch.arange(10000))


# -------------------------------------------------------------------------------------- Augment

def random_batch(b: int = 64, c: int = 3, h: int = 12, w: int = 10) -> torch.Tensor:
    return torch.randint(1, 256, (b, c, h, w), generator=torch.Generator().manual_seed(0),
                         dtype=torch.uint8)


def test_augment_keeps_shape_and_dtype() -> None:
    x = random_batch()
    aug = Augment(crop_padding=3, hflip=True, cutout=4)
    for batch in (x, x.float()):
        out = aug(batch, torch.Generator().manual_seed(1))
        assert out.shape == batch.shape and out.dtype == batch.dtype
    out1 = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(out1, aug(x, torch.Generator().manual_seed(1)))
    assert torch.equal(Augment()(x, torch.Generator()), x)
    assert torch.equal(Augment(crop_padding=0, hflip=False, cutout=0)(x, torch.Generator()), x)
    with pytest.raises(ValueError):
        Augment(crop_padding=-1)


def test_hflip_flips_exactly() -> None:
    x = random_batch()
    out = Augment(hflip=True)(x, torch.Generator().manual_seed(2))
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))  # exactly one of the two
    assert 16 < sum(flipped) < 48


def test_crop_shifts_by_a_padded_offset() -> None:
    x, p = random_batch(b=32), 2
    out = Augment(crop_padding=p)(x, torch.Generator().manual_seed(3))
    padded = F.pad(x, (p, p, p, p))
    h, w = x.shape[2:]
    offsets = []
    for i in range(len(x)):
        matches = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                   if torch.equal(out[i], padded[i, :, dy:dy + h, dx:dx + w])]
        assert len(matches) == 1
        offsets.append(matches[0])
    assert len(set(offsets)) > 10
    zero_shift = [i for i, o in enumerate(offsets) if o == (p, p)]
    assert all(torch.equal(out[i], x[i]) for i in zero_shift)


def test_cutout_zeroes_a_square() -> None:
    x, s = random_batch(b=48, h=16, w=16), 6
    out = Augment(cutout=s)(x, torch.Generator().manual_seed(4))
    full_squares = 0
    for o, xi in zip(out, x, strict=True):
        zero = o == 0
        assert torch.equal(zero, zero[:1].expand_as(zero))  # the same pixels in every channel
        rows, cols = zero[0].nonzero(as_tuple=True)
        top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
        box = zero[0, top:bottom + 1, left:right + 1]
        assert box.all() and int(zero[0].sum()) == box.numel()  # one filled rectangle
        assert box.shape[0] <= s and box.shape[1] <= s
        assert torch.equal(o[~zero], xi[~zero])  # everything else untouched
        if 0 < top and bottom < 15 and 0 < left and right < 15:
            assert box.shape == (s, s)
            full_squares += 1
    assert full_squares > 5
