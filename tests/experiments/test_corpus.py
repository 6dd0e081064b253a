"""The byte-level corpus: determinism, split sizes, SHA-256, local paths."""

import hashlib
import platform
from pydoc_data.topics import topics

import numpy as np
import pytest

from experiments import corpus


@pytest.fixture(scope="module")
def cpython():
    return corpus.load_corpus()


def test_cpython_corpus_is_deterministic_and_recorded(cpython):
    again = corpus.load_corpus()
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(cpython, split), getattr(again, split))
    stream = corpus.SEPARATOR.join(data for _, data in corpus.cpython_documents())
    assert cpython.sha256 == again.sha256 == hashlib.sha256(stream).hexdigest()
    assert cpython.n_bytes == len(stream)
    assert cpython.python_version == platform.python_version()
    assert cpython.documents == ("pydoc_data.topics", *corpus.STDLIB_MODULES)
    # the prose part is the help() topics, about 0.46 MB
    prose = corpus.cpython_documents()[0][1]
    assert prose.startswith(topics[sorted(topics)[0]].strip().encode())
    assert 300_000 < len(prose) < 700_000 and cpython.n_bytes > 1_000_000


def test_split_sizes_and_partition(cpython):
    n_blocks = -(-cpython.n_bytes // 4096)
    n_val = round(n_blocks * 0.05)
    assert cpython.val.size == cpython.test.size == n_val * 4096  # the short last block is rarely held out
    assert cpython.train.size + cpython.val.size + cpython.test.size == cpython.n_bytes
    # every split holds both prose and code
    for split in (cpython.val, cpython.test):
        text = split.tobytes()
        assert b"def " in text and b" the " in text


def test_split_blocks_exact_partition():
    data = np.arange(103, dtype=np.int64)  # distinct values, so membership is checkable
    train, val, test = corpus.split_blocks(data, 0.1, 0.2, block_bytes=10)  # 11 blocks: 1 val, 2 test
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), data)
    for part in (train, val, test):
        assert np.all(np.diff(part) > 0)  # stream order kept
    blocks = lambda part: sorted({int(v) // 10 for v in part})
    assert len(blocks(val)) == 1 and len(blocks(test)) == 2 and len(blocks(train)) == 8
    with pytest.raises(ValueError, match="too few"):
        corpus.split_blocks(data, 0.1, 0.1, block_bytes=60)
    with pytest.raises(ValueError, match="val_fraction=0.6"):
        corpus.split_blocks(data, 0.6, 0.1, block_bytes=10)


def test_local_folder_and_file(tmp_path):
    (tmp_path / "b.txt").write_text("beta " * 400)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.md").write_text("alpha " * 400)
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02" * 10)
    (tmp_path / ".hidden").write_text("secret")
    c = corpus.load_corpus(tmp_path, block_bytes=256)
    assert c.documents == ("b.txt", "sub/a.md")
    assert c.skipped == ("blob.bin: contains NUL bytes (binary)",)
    stream = b"beta " * 400 + b"\n\n" + b"alpha " * 400
    assert c.sha256 == hashlib.sha256(stream).hexdigest() and c.n_bytes == len(stream)
    single = corpus.load_corpus(tmp_path / "b.txt", block_bytes=100)
    assert single.n_bytes == 2000 and single.documents == ("b.txt",)
    with pytest.raises(ValueError, match="is not text: contains NUL"):
        corpus.load_corpus(tmp_path / "blob.bin")
    with pytest.raises(ValueError, match="neither a file nor a folder"):
        corpus.load_corpus(tmp_path / "missing")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        corpus.load_corpus(tmp_path / "latin.txt")


def test_batches_are_windows_of_the_split_and_seeded():
    data = np.arange(200, dtype=np.uint8)
    b = corpus.sample_batches(data, n_batches=3, batch_size=4, seq_len=8, seed=1)
    assert b.shape == (3, 4, 9) and b.dtype == np.int32
    assert np.all(np.diff(b, axis=-1) == 1)  # contiguous windows of the (increasing) data
    np.testing.assert_array_equal(b, corpus.sample_batches(data, 3, 4, 8, seed=1))
    assert not np.array_equal(b, corpus.sample_batches(data, 3, 4, 8, seed=2))
    w = corpus.eval_windows(data, seq_len=9, max_windows=5)
    assert w.shape == (5, 10) and w[0, 0] == 0 and w[-1, 0] == 190
    with pytest.raises(ValueError, match="shorter than one window"):
        corpus.sample_batches(data[:5], 1, 1, 8, seed=0)
