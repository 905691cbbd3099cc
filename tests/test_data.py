"""Tests of ncollapse.data: every expected value comes from an independent computation."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import pickle
import struct
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from ncollapse import data as D
from ncollapse.geometry import is_simplex_etf

# ---------------------------------------------------------------------------------------------
# helpers


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode an array in the IDX format, written independently of the reader."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    code = codes[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def fake_mnist(root: Path, n_train: int = 30, n_test: int = 20, seed: int = 0,
               gz: bool = True) -> dict[str, np.ndarray]:
    """Write the four IDX files of a tiny 10-class MNIST look-alike; return the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        for base, arr in zip(D.IDX_FILES[split], (images, labels), strict=True):
            raw = idx_bytes(arr)
            root.mkdir(parents=True, exist_ok=True)
            if gz:
                (root / f"{base}.gz").write_bytes(gzip.compress(raw))
            else:
                (root / base).write_bytes(raw)
            arrays[base] = arr
    return arrays


def stats64(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of (N, C, H, W) data in float64."""
    xf = x.astype(np.float64)
    return xf.mean(axis=(0, 2, 3)), xf.std(axis=(0, 2, 3))


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_split_shapes_and_content():
    from sklearn.datasets import load_digits

    train = D.load_dataset("digits", normalize=False)
    test = D.load_dataset("digits", split="test", normalize=False)
    bunch = load_digits()
    n = bunch.target.size
    assert len(train) + len(test) == n
    assert len(test) == int(np.ceil(0.2 * n))
    assert train.input_shape == (1, 8, 8) and test.input_shape == (1, 8, 8)
    assert train.inputs.dtype == torch.float32 and train.targets.dtype == torch.int64
    assert train.num_classes == 10 and len(train.class_names) == 10
    # the two splits together are exactly the sklearn data / 16 (as a multiset of rows)
    ours = np.concatenate([train.inputs.reshape(-1, 64).double().numpy(),
                           test.inputs.reshape(-1, 64).double().numpy()])
    ref = bunch.data / 16.0
    labels = np.concatenate([train.targets.numpy(), test.targets.numpy()])
    key = lambda a, y: sorted(map(tuple, np.column_stack([a, y])))  # noqa: E731
    assert key(ours, labels) == key(ref, bunch.target)
    # stratified: each class's share of the test split matches its share overall within 1
    total = np.bincount(bunch.target)
    assert np.all(np.abs(np.array(test.class_counts()) - 0.2 * total) <= 1)


def test_digits_split_independent_of_run_seed():
    a = D.load_dataset("digits", seed=0)
    b = D.load_dataset("digits", seed=123)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)


def test_normalization_uses_train_statistics_for_both_splits():
    raw_tr = D.load_dataset("digits", normalize=False)
    raw_te = D.load_dataset("digits", split="test", normalize=False)
    tr = D.load_dataset("digits")
    te = D.load_dataset("digits", split="test")
    mean, std = stats64(raw_tr.inputs.double().numpy())
    np.testing.assert_allclose(tr.normalization[0], mean, rtol=1e-12)
    np.testing.assert_allclose(tr.normalization[1], std, rtol=1e-12)
    np.testing.assert_array_equal(te.normalization[0], tr.normalization[0])
    expect_te = (raw_te.inputs.double().numpy() - mean[0]) / std[0]
    np.testing.assert_allclose(te.inputs.double().numpy(), expect_te, rtol=1e-6, atol=1e-6)
    # the train split is standardised, the test split only approximately
    assert abs(tr.inputs.double().mean().item()) < 1e-6
    assert abs(tr.inputs.double().std(unbiased=False).item() - 1) < 1e-6
    assert te.inputs.double().mean().item() != pytest.approx(0.0, abs=1e-6)


def test_per_class_subset_is_balanced_and_seeded():
    a = D.load_dataset("digits", per_class=7, seed=1)
    b = D.load_dataset("digits", per_class=7, seed=1)
    c = D.load_dataset("digits", per_class=7, seed=2)
    assert a.class_counts() == [7] * 10
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)
    # seed=None: the first 7 samples of each class, in order
    full = D.load_dataset("digits")
    first = D.load_dataset("digits", per_class=7, seed=None)
    y = full.targets.numpy()
    idx = np.sort(np.concatenate([np.flatnonzero(y == k)[:7] for k in range(10)]))
    assert torch.equal(first.inputs, full.inputs[idx])
    # subsets keep the full train split's normalization
    np.testing.assert_array_equal(a.normalization[0], full.normalization[0])


@pytest.mark.parametrize("ratio", [1.0, 2.5, 10.0])
def test_imbalance_profiles(ratio):
    n, c = 40, 10
    step = D.load_dataset("digits", per_class=n, imbalance="step", ratio=ratio)
    expect_step = [n] * (c // 2) + [max(1, int(np.floor(n / ratio)))] * (c - c // 2)
    assert step.class_counts() == expect_step
    exp = D.load_dataset("digits", per_class=n, imbalance="exp", ratio=ratio)
    expect_exp = np.maximum(1, np.floor(n * ratio ** (-np.arange(c) / (c - 1)))).astype(int)
    assert exp.class_counts() == expect_exp.tolist()
    assert exp.class_counts()[0] == n and exp.class_counts()[-1] == int(n / ratio)


def test_imbalance_without_per_class_uses_smallest_class():
    full = D.load_dataset("digits")
    sub = D.load_dataset("digits", imbalance="step", ratio=4)
    smallest = min(full.class_counts())
    assert sub.class_counts()[0] == smallest and sub.class_counts()[-1] == smallest // 4


@pytest.mark.parametrize("kwargs, words", [
    (dict(name="svhn"), ["dataset", "digits", "cifar10", "gaussian"]),
    (dict(name="digits", split="val"), ["split", "train", "test"]),
    (dict(name="digits", imbalance="linear"), ["imbalance", "step", "exp"]),
    (dict(name="digits", imbalance="exp", ratio=0.5), ["ratio", ">= 1"]),
    (dict(name="digits", ratio=float("nan")), ["ratio"]),
    (dict(name="digits", per_class=0), ["per_class"]),
    (dict(name="digits", per_class=10_000), ["class", "lower per_class"]),
    (dict(name="digits", dim=3), ["unknown option", "dim"]),
    (dict(name="gaussian", mirror="x"), ["unknown option", "num_classes", "noise"]),
    (dict(name="gaussian", dim=2), ["dim"]),
    (dict(name="gaussian", noise=-1.0), ["noise"]),
])
def test_bad_arguments_name_the_valid_choices(kwargs, words):
    name = kwargs.pop("name")
    with pytest.raises(ValueError) as err:
        D.load_dataset(name, **kwargs)
    for w in words:
        assert w in str(err.value)


def test_dataset_protocol():
    ds = D.load_dataset("gaussian", per_class=3, num_classes=4, dim=5)
    x, y = ds[5]
    assert x.shape == (5,) and y.dtype == torch.int64 and int(y) == ds.targets[5]
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 5) and yb.shape == (4,)
    assert "gaussian" in repr(ds)


# ---------------------------------------------------------------------------------------------
# gaussian


def test_gaussian_means_form_a_simplex_etf():
    x, y, means = D.make_gaussian(num_classes=5, dim=8, per_class=4, separation=3.0,
                                  noise=0.0, seed=7)
    assert is_simplex_etf(means, atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 3.0, rtol=1e-12)
    np.testing.assert_array_equal(x, means[y])
    assert np.bincount(y).tolist() == [4] * 5


def test_gaussian_noise_splits_and_seeds():
    kw = dict(num_classes=3, dim=4, per_class=2000, separation=2.0, noise=0.5)
    x_tr, y_tr, m = D.make_gaussian(seed=1, split="train", **kw)
    x_te, _, m_te = D.make_gaussian(seed=1, split="test", **kw)
    np.testing.assert_array_equal(m, m_te)
    assert not np.array_equal(x_tr, x_te)
    resid = x_tr - m[y_tr]
    assert abs(resid.std() - 0.5) < 0.02 and abs(resid.mean()) < 0.02
    x2, _, m2 = D.make_gaussian(seed=2, split="train", **kw)
    assert not np.allclose(m, m2)
    x_again, _, _ = D.make_gaussian(seed=1, split="train", **kw)
    np.testing.assert_array_equal(x_tr, x_again)


def test_gaussian_through_load_dataset():
    kw = dict(num_classes=4, dim=6, separation=5.0, noise=0.1)
    tr = D.load_dataset("gaussian", per_class=20, normalize=False, seed=3, **kw)
    te = D.load_dataset("gaussian", split="test", per_class=20, test_per_class=5,
                        normalize=False, seed=3, **kw)
    x, y, _ = D.make_gaussian(per_class=20, seed=3, **kw)
    np.testing.assert_allclose(tr.inputs.double().numpy(), x, rtol=1e-6, atol=1e-6)
    assert tr.input_shape == (6,) and tr.num_classes == 4 and te.class_counts() == [5] * 4
    norm = D.load_dataset("gaussian", per_class=20, seed=3, **kw)
    mean, std = x.mean(axis=0), x.std(axis=0)
    np.testing.assert_allclose(norm.normalization[0], mean, rtol=1e-10)
    np.testing.assert_allclose(norm.inputs.double().numpy(), (x - mean) / std, atol=1e-5)
    imb = D.load_dataset("gaussian", per_class=20, imbalance="step", ratio=4, **kw)
    assert imb.class_counts() == [20, 20, 5, 5]


# ---------------------------------------------------------------------------------------------
# IDX files


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, dtype, gz):
    arr = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype) if dtype != np.uint8 \
        else np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    raw = idx_bytes(arr)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = D.read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_read_idx_rejects_corrupt_files(tmp_path):
    raw = idx_bytes(np.zeros((4, 2, 2), np.uint8))
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        D.read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(ValueError, match="not an IDX file"):
        D.read_idx(tmp_path / "magic")
    (tmp_path / "badgz.gz").write_bytes(gzip.compress(raw)[:-8])
    with pytest.raises(ValueError, match="corrupt gzip"):
        D.read_idx(tmp_path / "badgz.gz")


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_directory(tmp_path, gz):
    arrays = fake_mnist(tmp_path, gz=gz)
    tr = D.load_dataset("mnist", root=tmp_path, normalize=False)
    assert tr.input_shape == (1, 28, 28) and len(tr) == 30
    np.testing.assert_allclose(tr.inputs[:, 0].double().numpy(),
                               arrays["train-images-idx3-ubyte"] / 255.0, rtol=1e-7)
    np.testing.assert_array_equal(tr.targets.numpy(), arrays["train-labels-idx1-ubyte"])
    te = D.load_dataset("mnist", root=tmp_path, split="test")
    train_px = arrays["train-images-idx3-ubyte"].astype(np.float64) / 255.0
    mean, std = train_px.mean(), train_px.std()
    np.testing.assert_allclose(te.normalization[0], [mean], rtol=1e-12)
    np.testing.assert_allclose(te.normalization[1], [std], rtol=1e-12)
    expect = (arrays["t10k-images-idx3-ubyte"] / 255.0 - mean) / std
    np.testing.assert_allclose(te.inputs[:, 0].double().numpy(), expect, rtol=1e-6, atol=1e-6)


def test_missing_idx_files_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        D.load_dataset("mnist", root=tmp_path)


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("NCOLLAPSE_DATA_DIR", str(tmp_path))
    assert D.default_root("mnist") == tmp_path / "mnist"
    monkeypatch.delenv("NCOLLAPSE_DATA_DIR")
    expect = (D.DEBIAN_FASHION_MNIST_DIR if D.DEBIAN_FASHION_MNIST_DIR.is_dir()
              else Path.home() / ".cache" / "ncollapse" / "fashion-mnist")
    assert D.default_root("fashion-mnist") == expect


# ---------------------------------------------------------------------------------------------
# download against a local HTTP server


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/'www' on 127.0.0.1 (ephemeral port); yields (directory, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=www))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def raw_digests(directory: Path) -> dict[str, str]:
    return {p.name[:-3]: hashlib.sha256(gzip.decompress(p.read_bytes())).hexdigest()
            for p in directory.glob("*.gz")}


def test_download_verifies_and_writes(server, tmp_path):
    www, url = server
    arrays = fake_mnist(www)
    dest = tmp_path / "dest"
    out = D.download_idx("mnist", dest, mirror=url, sha256=raw_digests(www))
    assert out == dest
    for base in (*D.IDX_FILES["train"], *D.IDX_FILES["test"]):
        assert (dest / f"{base}.gz").read_bytes() == (www / f"{base}.gz").read_bytes()
    assert not list(dest.glob(".*.tmp"))
    ds = D.load_dataset("mnist", root=dest, normalize=False)
    np.testing.assert_array_equal(ds.targets.numpy(), arrays["train-labels-idx1-ubyte"])
    # a second call finds verified files and fetches nothing (the server is now empty)
    for p in www.iterdir():
        p.unlink()
    D.download_idx("mnist", dest, mirror=url, sha256=raw_digests(dest))


def test_download_through_load_dataset_and_env_mirror(server, tmp_path, monkeypatch):
    www, url = server
    fake_mnist(www)
    monkeypatch.setenv("NCOLLAPSE_MNIST_MIRROR", url)
    ds = D.load_dataset("mnist", root=tmp_path / "d", download=True, sha256=raw_digests(www))
    assert len(ds) == 30


def test_download_checksum_mismatch_writes_nothing(server, tmp_path):
    www, url = server
    fake_mnist(www)
    digests = raw_digests(www)
    # corrupt one served file after the digests were taken: still valid gzip, other content
    name = "train-labels-idx1-ubyte"
    raw = bytearray(gzip.decompress((www / f"{name}.gz").read_bytes()))
    raw[-1] ^= 0xFF
    (www / f"{name}.gz").write_bytes(gzip.compress(bytes(raw)))
    dest = tmp_path / "dest"
    with pytest.raises(D.ChecksumError, match="checksum mismatch") as err:
        D.download_idx("mnist", dest, mirror=url, sha256=digests)
    assert digests[name] in str(err.value)
    assert hashlib.sha256(bytes(raw)).hexdigest() in str(err.value)
    assert not (dest / f"{name}.gz").exists()


def test_download_fashion_uses_known_digests(server, tmp_path):
    www, url = server
    fake_mnist(www)  # not the real files, so the built-in Fashion-MNIST digests reject them
    with pytest.raises(D.ChecksumError, match="checksum mismatch"):
        D.download_idx("fashion-mnist", tmp_path / "dest", mirror=url)


def test_download_without_digest_warns(server, tmp_path):
    www, url = server
    fake_mnist(www)
    with pytest.warns(UserWarning, match="no known SHA-256"):
        D.download_idx("mnist", tmp_path / "dest", mirror=url)
    assert len(list((tmp_path / "dest").glob("*.gz"))) == 4


def test_download_network_failure(server, tmp_path):
    www, url = server  # empty directory: every file is a 404
    dest = tmp_path / "dest"
    with pytest.raises(D.DownloadError, match="download failed") as err:
        D.download_idx("mnist", dest, mirror=url)
    assert "manually" in str(err.value) and str(dest) in str(err.value)
    # nothing listens on a closed port
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(D.DownloadError, match="download failed"):
        D.download_idx("mnist", dest, mirror=f"http://127.0.0.1:{port}/", timeout=5)


# ---------------------------------------------------------------------------------------------
# real Fashion-MNIST (Debian's dataset-fashion-mnist)


@pytest.mark.skipif(not D.DEBIAN_FASHION_MNIST_DIR.is_dir(),
                    reason="Debian's Fashion-MNIST files (/usr/share/datasets/fashion-mnist, "
                           "package dataset-fashion-mnist) are not installed")
def test_real_fashion_mnist():
    root = D.DEBIAN_FASHION_MNIST_DIR
    for base, digest in D.IDX_SHA256["fashion-mnist"].items():
        raw = gzip.decompress((root / f"{base}.gz").read_bytes())
        assert hashlib.sha256(raw).hexdigest() == digest
    te = D.load_dataset("fashion-mnist", split="test")
    labels = D.read_idx(root / "t10k-labels-idx1-ubyte.gz")
    images = D.read_idx(root / "train-images-idx3-ubyte.gz")
    assert te.input_shape == (1, 28, 28) and len(te) == labels.size
    assert te.class_counts() == np.bincount(labels).tolist()
    px = images.astype(np.float64) / 255.0
    np.testing.assert_allclose(te.normalization[0], [px.mean()], rtol=1e-12)
    np.testing.assert_allclose(te.normalization[1], [px.std()], rtol=1e-12)
    assert te.class_names[0] == "T-shirt/top"


# ---------------------------------------------------------------------------------------------
# CIFAR


def cifar_records(n: int, label_bytes: int, num_classes: int, seed: int
                  ) -> tuple[bytes, np.ndarray, np.ndarray]:
    """n CIFAR records built pixel by pixel from the documented layout: label byte(s), then
    1024 red, 1024 green, 1024 blue values, each plane row-major."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=(n, label_bytes), dtype=np.uint8)
    out = bytearray()
    for k in range(n):
        out += bytes(labels[k].tolist())
        for c in range(3):
            for i in range(32):
                out += bytes(images[k, c, i].tolist())
    return bytes(out), images, labels


def write_cifar10_bin(root: Path, n: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    xs, ys = [], []
    for k, f in enumerate([*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]):
        raw, x, y = cifar_records(n, 1, 10, seed=k)
        (d / f).write_bytes(raw)
        xs.append(x)
        ys.append(y[:, 0])
    names = [f"name{c}" for c in range(10)]
    (d / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    return np.concatenate(xs[:5]), np.concatenate(ys[:5]).astype(np.int64), xs[5]


def test_cifar10_binary(tmp_path):
    x_tr, y_tr, x_te = write_cifar10_bin(tmp_path)
    ds = D.load_dataset("cifar10", root=tmp_path, normalize=False)
    assert ds.input_shape == (3, 32, 32) and len(ds) == 15 and ds.num_classes == 10
    np.testing.assert_allclose(ds.inputs.double().numpy(), x_tr / 255.0, rtol=1e-7)
    np.testing.assert_array_equal(ds.targets.numpy(), y_tr)
    assert ds.class_names == [f"name{c}" for c in range(10)]
    te = D.load_dataset("cifar10", root=tmp_path, split="test")
    mean, std = stats64(x_tr / 255.0)
    np.testing.assert_allclose(te.normalization[0], mean, rtol=1e-12)
    expect = (x_te / 255.0 - mean[None, :, None, None]) / std[None, :, None, None]
    np.testing.assert_allclose(te.inputs.double().numpy(), expect, rtol=1e-6, atol=1e-6)


def test_cifar100_binary_fine_labels_from_tar_gz(tmp_path):
    src = tmp_path / "src" / "cifar-100-binary"
    src.mkdir(parents=True)
    raw_tr, x_tr, y_tr = cifar_records(4, 2, 100, seed=1)
    raw_te, _, _ = cifar_records(2, 2, 100, seed=2)
    (src / "train.bin").write_bytes(raw_tr)
    (src / "test.bin").write_bytes(raw_te)
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar-100-binary.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="cifar-100-binary")
    ds = D.load_dataset("cifar100", root=root, normalize=False)
    assert ds.num_classes == 100 and len(ds.class_names) == 100
    np.testing.assert_array_equal(ds.targets.numpy(), y_tr[:, 1])  # fine label = 2nd byte
    np.testing.assert_allclose(ds.inputs.double().numpy(), x_tr / 255.0, rtol=1e-7)


def test_cifar10_python_pickles(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    data = {}
    for f in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        x = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, size=2).tolist()
        data[f] = (x, y)
        (d / f).write_bytes(pickle.dumps({b"data": x, b"labels": y, b"batch_label": b"x"},
                                         protocol=2))
    names = [f"n{c}".encode() for c in range(10)]
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    ds = D.load_dataset("cifar10", root=tmp_path, normalize=False)
    x = np.concatenate([data[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_allclose(ds.inputs.reshape(10, -1).double().numpy(), x / 255.0, rtol=1e-7)
    assert ds.targets.tolist() == sum((data[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert ds.class_names == [f"n{c}" for c in range(10)]


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_restricted_unpickler_refuses_code(tmp_path):
    target = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(str(target))})
    (tmp_path / "evil.pkl").write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle"):
        D.restricted_pickle_load(tmp_path / "evil.pkl")
    assert not target.exists()
    # the same payload as a CIFAR batch is refused through load_dataset too
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "test_batch").write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError):
        D.load_dataset("cifar10", root=tmp_path, split="test", normalize=False)
    assert not target.exists()
    # object arrays are refused as well
    (tmp_path / "obj.pkl").write_bytes(pickle.dumps(np.array([1, "a"], dtype=object)))
    with pytest.raises(pickle.UnpicklingError):
        D.restricted_pickle_load(tmp_path / "obj.pkl")
    # plain data passes
    plain = {b"a": np.arange(3.0), "b": [1, 2.5, "s", b"t", None]}
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps(plain, protocol=5))
    out = D.restricted_pickle_load(tmp_path / "ok.pkl")
    np.testing.assert_array_equal(out[b"a"], plain[b"a"])
    assert out["b"] == plain["b"]


def _tar_with(path: Path, member: tarfile.TarInfo, content: bytes = b"x") -> None:
    with tarfile.open(path, "w:gz") as tar:
        if member.isfile():
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
        else:
            tar.addfile(member)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_safe_extract_refuses_escapes(tmp_path, kind):
    dest = tmp_path / "dest"
    if kind == "dotdot":
        member = tarfile.TarInfo("cifar-10-batches-bin/../../evil.txt")
    elif kind == "absolute":
        member = tarfile.TarInfo(str(tmp_path / "abs.txt"))
    else:
        member = tarfile.TarInfo("cifar-10-batches-bin/link")
        member.type = tarfile.SYMTYPE
        member.linkname = "/etc/passwd"
    _tar_with(tmp_path / "bad.tar.gz", member)
    with pytest.raises(ValueError, match="refusing unsafe member"):
        D.safe_extract_tar(tmp_path / "bad.tar.gz", dest)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "abs.txt").exists()
    assert not (dest / "cifar-10-batches-bin").exists()


def test_cifar_missing_and_malformed(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-bin"):
        D.load_dataset("cifar10", root=tmp_path)
    (tmp_path / "bad.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="3073-byte"):
        D.read_cifar_binary(tmp_path / "bad.bin")
