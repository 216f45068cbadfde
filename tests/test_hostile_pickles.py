"""Crafted and malformed pickles stay harmless (issue 18): the restricted unpickler rebuilds plain numeric
arrays, lists and dicts only.

Each crafted pickle is loaded in a child process: one that corrupts memory must crash the child, not
pytest, and each must end refused in one line. A bounded property-based fuzz throws random opcode
streams and mutations of a valid CIFAR batch at the unpickler.
"""

from __future__ import annotations

import ast
import os
import pickle
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfsup.data.cifar import FORMATS, _batch_arrays, _unpickle
from selfsup.data.restricted_pickle import PLAIN_DTYPES, restricted_loads
from tests.test_bad_inputs import RunsCode

try:  # numpy >= 2
    from numpy._core import numeric
except ImportError:  # numpy 1.x
    from numpy.core import numeric




def g(module: str, name: str) -> bytes:
    """GLOBAL: the pickle names ``module.name``."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def text(value: str) -> bytes:
    return b"X" + struct.pack("<I", len(value.encode())) + value.encode()


def raw(value: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(value)) + value


def num(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


MARK, TUPLE, TUPLE1, TUPLE3, REDUCE, BUILD, NONE = b"(", b"t", b"\x85", b"\x87", b"R", b"b", b"N"
EMPTY_DICT, EMPTY_LIST, SETITEM, APPEND, TRUE, FALSE, POP = b"}", b"]", b"s", b"a", b"\x88", b"\x89", b"0"
PUT = lambda i: b"q" + bytes([i])
GET = lambda i: b"h" + bytes([i])


def framed(body: bytes) -> bytes:
    return b"\x80\x03" + body + b"."


def dtype_u1(state_order: str = "|") -> bytes:
    return (g("numpy", "dtype") + text("u1") + FALSE + TRUE + TUPLE3 + REDUCE
            + MARK + num(3) + text(state_order) + NONE * 3 + num(-1) + num(-1) + num(0) + TUPLE + BUILD)


def empty_array() -> bytes:
    return g("numpy._core.multiarray", "_reconstruct") + g("numpy", "ndarray") + num(0) + TUPLE1 + raw(b"b") + TUPLE3 + REDUCE


def array_state(data: bytes, dtype: bytes | None = None) -> bytes:
    return MARK + num(1) + num(len(data)) + TUPLE1 + (dtype or dtype_u1()) + FALSE + raw(data) + TUPLE + BUILD


def batch_of(data_item: bytes) -> bytes:
    """{b'data': <data_item>, b'labels': [0]}"""
    return EMPTY_DICT + raw(b"data") + data_item + SETITEM + raw(b"labels") + EMPTY_LIST + num(0) + APPEND + SETITEM


class Reduces:
    """Pickles as ``func(*args)`` (then BUILD ``state``), with the real numpy objects a crafted file names."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


OBJECT_FIELD_STATE = (3, "|", None, ("f0",), {"f0": (np.dtype("O"), 0)}, 8, 1, 0)


def _object_field_over_bytes() -> bytes:
    """The issue's gadget: a void dtype with one 'O' field and flags 0 over b'A'*8; reading it segfaulted."""
    void = Reduces(np.dtype, ("V8", False, True), OBJECT_FIELD_STATE)
    return pickle.dumps({b"data": Reduces(numeric._frombuffer, (b"A" * 8, void, (1,), "C")), b"labels": [0]}, 3)


GADGETS: dict[str, Callable[[Path], bytes]] = {
    "void dtype with an object field over attacker bytes": lambda _: _object_field_over_bytes(),
    "plain dtype re-stated with an object field": lambda _: pickle.dumps(
        {b"data": Reduces(numeric._frombuffer, (b"A" * 8, Reduces(np.dtype, ("u1", False, True), OBJECT_FIELD_STATE),
                                                 (8,), "C"))}, 3),
    "object array": lambda _: pickle.dumps({b"data": np.array([1, "x"], dtype=object)}, 2),
    "structured array": lambda _: pickle.dumps({b"data": np.zeros(2, dtype=[("a", "i4"), ("b", "f4")])}, 4),
    "string array": lambda _: pickle.dumps({b"data": np.array(["ab", "cd"])}, 5),
    "datetime array": lambda _: pickle.dumps({b"data": np.array(["2020-01-01"], dtype="M8[D]")}, 2),
    "shape claiming more than its bytes": lambda _: pickle.dumps(
        {b"data": Reduces(numeric._frombuffer, (b"A" * 8, np.dtype("u1"), (10**12,), "C"))}, 5),
    "os.system through __reduce__": lambda case: pickle.dumps({b"data": RunsCode(case / "ran")}, 2),
    "_codecs.encode with another codec": lambda _: framed(batch_of(g("_codecs", "encode") + text("x") + text("zlib_codec")
                                                                   + b"\x86" + REDUCE)),
    "numpy.ndarray called directly": lambda _: framed(batch_of(g("numpy", "ndarray") + num(2**30) + TUPLE1 + TUPLE1
                                                               + REDUCE)),
    "_reconstruct of something else than ndarray": lambda _: framed(batch_of(
        g("numpy._core.multiarray", "_reconstruct") + text("x") + num(0) + TUPLE1 + raw(b"b") + TUPLE3 + REDUCE)),
    "bytes() of a huge count": lambda _: framed(batch_of(g("builtins", "bytes") + num(2**31 - 1) + TUPLE1 + REDUCE)),
    "BUILD with a __dict__ on a dtype": lambda _: framed(batch_of(
        empty_array() + MARK + num(1) + num(1) + TUPLE1 + g("numpy", "dtype") + text("u1") + FALSE + TRUE + TUPLE3
        + REDUCE + EMPTY_DICT + text("dtype") + text("O") + SETITEM + BUILD + FALSE + raw(b"A") + TUPLE + BUILD)),
    "BUILD on a list": lambda _: framed(batch_of(EMPTY_LIST + EMPTY_DICT + text("x") + num(1) + SETITEM + BUILD)),
    "array content set twice": lambda _: framed(batch_of(empty_array() + array_state(b"A" * 8) + array_state(b"B" * 9))),
    "memo: an array given as another's dtype": lambda _: framed(batch_of(
        empty_array() + PUT(1) + array_state(b"A" * 8) + POP + g("numpy._core.numeric", "_frombuffer")
        + MARK + raw(b"A" * 8) + GET(1) + num(8) + TUPLE1 + text("C") + TUPLE + REDUCE)),
    "memo: a dtype re-stated with fields after use": lambda _: framed(batch_of(
        empty_array() + array_state(b"A" * 8, dtype_u1() + PUT(2)) + GET(2)
        + MARK + num(3) + text("|") + NONE + MARK + text("f0") + TUPLE + EMPTY_DICT + num(8) + num(1) + num(0) + TUPLE
        + BUILD + POP)),
    "memo: a dtype left in the data": lambda _: framed(batch_of(dtype_u1())),
    "INST naming os.system": lambda case: b"(S'touch " + str(case / "ran").encode() + b"'\nios\nsystem\n.",
    "OBJ naming posix.system": lambda case: framed(MARK + g("posix", "system") + text(f"touch {case / 'ran'}") + b"o"),
    "NEWOBJ on numpy.ndarray": lambda _: framed(batch_of(g("numpy", "ndarray") + num(2**30) + TUPLE1 + b"\x81")),
    "NEWOBJ_EX on a stand-in": lambda _: b"\x80\x04" + batch_of(
        g("numpy", "dtype") + text("u1") + TUPLE1 + EMPTY_DICT + b"\x92") + b".",
    "extension registry code for posix.system": lambda _: framed(batch_of(b"\x82" + bytes([240]))),
    "persistent id": lambda _: framed(batch_of(text("x") + b"Q")),
    "lists nested 1000 deep": lambda _: framed(batch_of(EMPTY_LIST * 1000 + APPEND * 999)),
}

WORKER = r"""
import copyreg, pathlib, sys
import numpy as np
from selfsup.data.restricted_pickle import restricted_loads
copyreg.add_extension("posix", "system", 240)

def touch(item, seen):
    # read every array the way a loader would: the dereference a forged dtype turns into a crash
    if id(item) in seen:
        return
    seen.add(id(item))
    if isinstance(item, np.ndarray):
        np.asarray(item, dtype=np.uint8).sum(), item.tolist()
    elif isinstance(item, (list, tuple)):
        [touch(value, seen) for value in item]
    elif isinstance(item, dict):
        [touch(value, seen) for value in item.values()]

for path in map(pathlib.Path, sys.argv[1:]):
    print("start", path.name, flush=True)
    try:
        touch(restricted_loads(path.read_bytes()), set())
        print("loaded", path.name, "''", flush=True)
    except ValueError as err:
        print("refused", path.name, repr(str(err)), flush=True)
"""


def _load_in_children(files: list[Path]) -> dict[str, tuple[str, str]]:
    """(outcome, message) of each crafted file; a child that crashes is blamed on the file it had started, and the
    files after it get a fresh child."""
    outcomes: dict[str, tuple[str, str]] = {}
    remaining = files
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    while remaining:
        result = subprocess.run([sys.executable, "-c", WORKER, *map(str, remaining)], check=False, capture_output=True,
                                text=True, timeout=120, env=env)
        started = None
        for line in result.stdout.splitlines():
            kind, name, *detail = line.split(" ", 2)
            started = name if kind == "start" else started
            if kind != "start":
                outcomes[name] = (kind, ast.literal_eval(detail[0]))
        if result.returncode != 0:
            blamed = started if started not in outcomes and started else remaining[0].name
            outcomes[blamed] = ("crashed", f"exit status {result.returncode}: {result.stderr[-500:]}")
        remaining = [f for f in remaining if f.name not in outcomes]
    return outcomes


@pytest.fixture(scope="session")
def gadget_outcomes(tmp_path_factory) -> tuple[dict[str, tuple[str, str]], Path]:
    case = tmp_path_factory.mktemp("gadgets")
    files = []
    for i, (name, craft) in enumerate(GADGETS.items()):
        files.append(case / f"gadget_{i:02d}")
        files[-1].write_bytes(craft(case))
    outcomes = _load_in_children(files)
    return {name: outcomes[file.name] for name, file in zip(GADGETS, files)}, case


@pytest.mark.parametrize("name", list(GADGETS))
def test_crafted_pickle_is_refused_in_one_line_without_crash(name, gadget_outcomes):
    outcomes, case = gadget_outcomes
    kind, message = outcomes[name]
    assert kind == "refused", (kind, message)
    assert message and "\n" not in message and len(message) < 400, message
    assert not (case / "ran").exists()


def test_the_cifar_loader_says_which_file_was_refused_and_why():
    with pytest.raises(ValueError, match="data_batch_1 was refused: it asks for an array of dtype 'V8'") as error:
        _unpickle(_object_field_over_bytes(), "data_batch_1")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("protocol", range(6))
def test_plain_arrays_lists_and_dicts_still_load_with_every_protocol(protocol):
    batch = {b"data": np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072), b"labels": [3, 7],
             b"f": np.asfortranarray(np.linspace(0, 1, 6).astype(">f4").reshape(2, 3)), b"empty": np.zeros((0, 2), bool)}
    loaded = restricted_loads(pickle.dumps(batch, protocol=protocol))
    for key in (b"data", b"f", b"empty"):
        assert loaded[key].dtype == batch[key].dtype and np.array_equal(loaded[key], batch[key])
    data, labels = _batch_arrays(loaded, FORMATS["cifar10"], "data_batch_1")
    assert data.shape == (2, 3, 32, 32) and labels.tolist() == [3, 7] and loaded[b"f"].flags.f_contiguous


def test_a_python2_cifar_batch_with_byte_strings_loads():
    """CIFAR's batches were written by Python 2: strings (dtype codes, byte order, pixels) arrive as bytes."""
    py2_text = lambda value: b"U" + bytes([len(value)]) + value
    dtype = (g("numpy", "dtype") + py2_text(b"u1") + num(0) + num(1) + TUPLE3 + REDUCE
             + MARK + num(3) + py2_text(b"|") + NONE * 3 + num(-1) + num(-1) + num(0) + TUPLE + BUILD)
    pixels = bytes(range(256)) * 12
    data = (g("numpy.core.multiarray", "_reconstruct") + g("numpy", "ndarray") + num(0) + TUPLE1 + py2_text(b"b")
            + TUPLE3 + REDUCE + MARK + num(1) + num(1) + num(3072) + b"\x86" + dtype + num(0)
            + b"T" + struct.pack("<i", len(pixels)) + pixels + TUPLE + BUILD)
    loaded = restricted_loads(b"\x80\x02" + batch_of(data) + b".")
    assert loaded[b"data"].dtype == np.uint8 and loaded[b"data"].tobytes() == pixels and loaded[b"labels"] == [0]


# ---------------------------------------------------------------- bounded fuzz


def _edited(data: bytes, edits: list[tuple[int, bytes]]) -> bytes:
    for position, patch in edits:
        position %= max(1, len(data))
        data = data[:position] + patch + data[position + len(patch):]
    return data


edits = st.lists(st.tuples(st.integers(0, 2**20), st.binary(min_size=1, max_size=16)), min_size=1, max_size=6)

@contextmanager
def no_hang(seconds: int):
    """Fails the example instead of waiting for ever (SIGALRM: Linux, main thread)."""

    def stop(*_):
        raise TimeoutError(f"no result within {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


VALID_BATCH = pickle.dumps({b"data": np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072), b"labels": [1, 2]}, 2)
TOKENS = [g(m, n) for m, n in [("numpy", "dtype"), ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
                               ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode"), ("builtins", "bytes"),
                               ("posix", "system"), ("numpy", "frombuffer")]] + [
    MARK, TUPLE, TUPLE1, b"\x86", TUPLE3, REDUCE, BUILD, NONE, EMPTY_DICT, EMPTY_LIST, SETITEM, APPEND, TRUE, FALSE,
    b"e", b"u", b")", b"0", b"2", b"1", b"\x81", b"\x92", b"o", PUT(0), PUT(1), GET(0), GET(1), text("u1"), text("V8"),
    text("O8"), text("|"), text("<"), text("C"), text("latin1"), raw(b"A" * 8), raw(b"b"), num(0), num(1), num(3),
    num(-1), num(8), b"\x95" + struct.pack("<Q", 9)]


def _allowed(item, seen=None) -> bool:
    """True when ``item`` holds only what the unpickler promises."""
    seen = seen if seen is not None else set()
    if id(item) in seen:
        return True
    seen.add(id(item))
    if isinstance(item, np.ndarray):
        return item.dtype.str[1:] in PLAIN_DTYPES
    if isinstance(item, dict):
        return all(_allowed(k, seen) and _allowed(v, seen) for k, v in item.items())
    if isinstance(item, (list, tuple, set, frozenset)):
        return all(_allowed(v, seen) for v in item)
    return isinstance(item, (bool, int, float, complex, str, bytes, bytearray, type(None)))


pickles = st.one_of(
    st.binary(max_size=512),
    st.builds(lambda e: _edited(VALID_BATCH, e), edits),
    st.builds(lambda n: VALID_BATCH[:n], st.integers(0, len(VALID_BATCH))),
    st.builds(lambda proto, ops: bytes([0x80, proto]) + b"".join(ops) + b".", st.integers(2, 5),
              st.lists(st.sampled_from(TOKENS), max_size=40)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          database=None)
@given(raw_pickle=pickles)
def test_fuzzed_pickles_load_plain_data_or_fail_in_one_line(raw_pickle):
    with no_hang(10):
        try:
            loaded = restricted_loads(raw_pickle)
        except ValueError as err:
            assert str(err) and "\n" not in str(err), repr(str(err))
            return
        assert _allowed(loaded)
        if isinstance(loaded, dict):
            try:
                _batch_arrays(loaded, FORMATS["cifar10"], "data_batch_1")
            except ValueError as err:
                assert "\n" not in str(err)
