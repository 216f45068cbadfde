"""Sequence datasets: UCR/UEA archives in their ``.ts`` format and folders of WAV files.

Both become an ``ArrayDataset`` of float32 ``[N, C, T]`` series (``kind="sequence"``) with int64
labels. Split names: ``pretrain`` (what self-supervised training sees), ``train`` and ``test``.
"""

from __future__ import annotations

import math
import os
import wave
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

from selfsup.data.base import ArrayDataset

SPLITS = ("pretrain", "train", "test")
WAV_TEST_FRACTION = 0.25
WAV_SPLIT_SEED = 0


# ---------------------------------------------------------------- UCR / UEA .ts


def load_ucr(name_or_path: str, split: str = "train", root: str | None = None, unequal: str = "resample") -> ArrayDataset:
    """A UCR/UEA problem, e.g. ``GunPoint``, as float32 ``[N, C, T]`` series.

    ``name_or_path`` is a problem name or a ``.ts`` file. A name resolves to ``NAME_TRAIN.ts``
    (splits ``pretrain`` and ``train``) or ``NAME_TEST.ts`` (``test``), looked up in ``root``,
    ``root/NAME``, then in the copies shipped with sktime (GunPoint, ArrowHead, BasicMotions,
    JapaneseVowels, ...). A path is used as given, whatever the split.
    Missing values (``?``) are filled by linear interpolation along time. Series of unequal
    length are linearly resampled to the longest training length (``unequal="resample"``) or
    zero-padded/cut at the end (``unequal="pad"``); test series get the training length too.
    Normalisation statistics (``mean``, ``std`` per channel) come from the training file, so
    every split is normalised alike.
    """
    _check_split(split, "UCR")
    path = Path(name_or_path)
    if path.suffix == ".ts" or path.is_file():
        parsed = parse_ts(path, unequal)
        return _to_dataset(parsed, path.stem, parsed["data"])
    train = parse_ts(_find_ucr(name_or_path, "TRAIN", root), unequal)
    if split in ("pretrain", "train"):
        parsed = train
    else:
        parsed = parse_ts(_find_ucr(name_or_path, "TEST", root), unequal, length=train["data"].shape[-1])
    return _to_dataset(parsed, name_or_path, train["data"])


def parse_ts(path: str | os.PathLike, unequal: str = "resample", length: int | None = None) -> dict:
    """Parse a ``.ts`` file into ``{"data": float32 [N, C, T], "labels": [str] | None, "classes": [str]}``.

    ``T`` is ``length`` or the longest series; shorter ones are resampled or padded (``unequal``),
    longer ones resampled or cut.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"UCR file not found: {path}")
    if unequal not in ("resample", "pad"):
        raise ValueError(f"unequal must be 'resample' or 'pad', got '{unequal}'")
    header: dict[str, list[str]] = {}
    series, labels = [], []
    in_data = False
    for number, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise ValueError(f"{path}:{number}: expected a @header line or @data before the series")
            key, *values = line.split()
            header[key.lower()] = values
            in_data = key.lower() == "@data"
            continue
        dims, label = _parse_case(line, header, path, number)
        series.append(dims)
        labels.append(label)
    if not in_data:
        raise ValueError(f"{path}: no @data section; is this a UCR/UEA .ts file?")
    if not series:
        raise ValueError(f"{path}: the @data section is empty")
    channels = {len(s) for s in series}
    if len(channels) != 1:
        raise ValueError(f"{path}: cases have different numbers of dimensions {sorted(channels)}")
    has_labels = header.get("@classlabel", ["false"])[0].lower() == "true"
    classes = header.get("@classlabel", [])[1:] if has_labels else []
    if has_labels and not classes:
        classes = sorted(set(labels), key=_natural_key)
    return {"data": _stack(series, unequal, length), "labels": labels if has_labels else None, "classes": classes}


def _parse_case(line: str, header: dict, path: Path, number: int) -> tuple[list[np.ndarray], str | None]:
    if header.get("@timestamps", ["false"])[0].lower() == "true":
        raise ValueError(f"{path}: time-stamped .ts files are not supported; export the series without @timeStamps")
    parts = line.split(":")
    has_target = any(header.get(k, ["false"])[0].lower() == "true" for k in ("@classlabel", "@targetlabel"))
    label = parts.pop().strip() if has_target else None
    dims = []
    for part in parts:
        try:
            values = np.array([np.nan if v.strip() in ("?", "NaN", "nan", "") else float(v) for v in part.split(",")])
        except ValueError as err:
            raise ValueError(f"{path}:{number}: {err}; values must be numbers or '?'") from None
        dims.append(_fill_missing(values))
    return dims, label


def _fill_missing(values: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaNs; the ends take the nearest known value; all-missing -> zeros."""
    missing = np.isnan(values)
    if not missing.any():
        return values
    if missing.all():
        return np.zeros_like(values)
    known = np.flatnonzero(~missing)
    return np.interp(np.arange(len(values)), known, values[known])


def _stack(series: list[list[np.ndarray]], unequal: str, length: int | None = None) -> np.ndarray:
    length = length or max(len(d) for dims in series for d in dims)
    out = np.zeros((len(series), len(series[0]), length), dtype=np.float32)
    for i, dims in enumerate(series):
        for c, values in enumerate(dims):
            if len(values) == length:
                out[i, c] = values
            elif unequal == "pad":
                out[i, c, : min(len(values), length)] = values[:length]
            else:
                out[i, c] = _resample_linear(values, length)
    return out


def _resample_linear(values: np.ndarray, length: int) -> np.ndarray:
    if len(values) == 1:
        return np.full(length, values[0])
    return np.interp(np.linspace(0, len(values) - 1, length), np.arange(len(values)), values)


def _find_ucr(name: str, part: str, root: str | None) -> Path:
    filename = f"{name}_{part}.ts"
    candidates = [Path(root) / filename, Path(root) / name / filename] if root is not None else []
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    shipped = _sktime_data()
    if shipped is not None:
        candidates.append(shipped / name / filename)
        if candidates[-1].is_file():
            return candidates[-1]
    looked = ", ".join(str(c.parent) for c in candidates) or "nowhere (no --data-dir)"
    sktime = "" if shipped is not None else "; sktime, whose copies of GunPoint and others are looked up last, is not installed"
    raise FileNotFoundError(
        f"UCR problem '{name}': {filename} not found in {looked}{sktime}; "
        "download it from timeseriesclassification.com into --data-dir, or give a .ts path"
    )


def _sktime_data() -> Path | None:
    """The folder of UCR/UEA problems sktime ships, or None without sktime."""
    try:
        return Path(str(files("sktime.datasets") / "data"))
    except ModuleNotFoundError:
        return None


def _natural_key(text: str) -> tuple:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def _to_dataset(parsed: dict, name: str, reference: np.ndarray) -> ArrayDataset:
    data = parsed["data"]
    if parsed["labels"] is None:
        labels = np.full(len(data), -1, dtype=np.int64)
    else:
        index = {c: i for i, c in enumerate(parsed["classes"])}
        unknown = sorted(set(parsed["labels"]) - set(index))
        if unknown:
            raise ValueError(f"UCR problem '{name}': labels {unknown} are not in the @classLabel list")
        labels = np.array([index[label] for label in parsed["labels"]], dtype=np.int64)
    return _sequence_dataset(data, labels, parsed["classes"], name, reference)


def _sequence_dataset(
    data: np.ndarray, labels: np.ndarray, classes: list[str], name: str, reference: np.ndarray
) -> ArrayDataset:
    mean = reference.mean(axis=(0, 2))
    std = np.maximum(reference.std(axis=(0, 2)), 1e-8)
    return ArrayDataset(
        data=torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)),
        labels=torch.from_numpy(labels),
        classes=list(classes),
        name=name,
        kind="sequence",
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )


def _check_split(split: str, what: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"{what} data has splits {', '.join(SPLITS)}, not '{split}'")


# ---------------------------------------------------------------- WAV folders


def load_wav_folder(
    path: str | os.PathLike,
    split: str = "train",
    sample_rate: int = 16000,
    length: int | None = None,
    mono: bool = True,
    on_error: str = "stop",
) -> ArrayDataset:
    """A folder of WAV files, one subfolder per class, as float32 ``[N, C, T]`` audio in [-1, 1].

    Layout: ``DIR/train/CLASS/*.wav`` and ``DIR/test/CLASS/*.wav``, or ``DIR/CLASS/*.wav`` which is
    split deterministically (25% test, stratified by class). ``pretrain`` is the train part.
    Every file is resampled to ``sample_rate`` (polyphase filter, anti-aliased), averaged to one
    channel when ``mono``, then cut or zero-padded at the end to ``length`` samples (default:
    the longest file; the test split takes the training length). Normalisation statistics come
    from the training part. Unreadable files stop loading (``on_error="stop"``) or are skipped
    with a count (``on_error="skip"``).
    """
    _check_split(split, "WAV")
    if on_error not in ("stop", "skip"):
        raise ValueError(f"on_error must be 'stop' or 'skip', got '{on_error}'")
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"WAV folder not found: {root}")
    part = "train" if split in ("pretrain", "train") else "test"
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
        chosen = _list_wavs(root / part, classes)
    else:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        listed = _list_wavs(root, classes)
        chosen = _split_files(listed, part)
        if listed and not chosen:
            raise ValueError(f"the {len(listed)} WAV files in {root} leave none for the {part} split "
                             f"({WAV_TEST_FRACTION:.0%} of each class, rounded): add files, or use {root}/train and {root}/test")
    if not chosen:
        raise ValueError(f"no .wav files in {root / part if (root / part).is_dir() else root}; expected CLASS/*.wav subfolders")
    audio, labels, skipped = [], [], []
    for file, label in chosen:
        try:
            audio.append(_read_wav(file, sample_rate, mono))
            labels.append(label)
        except ValueError as err:
            if on_error == "stop":
                raise ValueError(f"{err}; fix or remove the file, or pass on_error='skip'") from None
            skipped.append(file)
    if skipped:
        print(f"skipped {len(skipped)} unreadable WAV file(s) in {root}, e.g. {skipped[0]}")
    reference = None
    if part == "test":
        reference = load_wav_folder(root, "train", sample_rate, length, mono, on_error).data.numpy()
        length = reference.shape[-1]
    data = _fit_length(audio, length)
    labels_array = np.array(labels, dtype=np.int64)
    return _sequence_dataset(data, labels_array, classes, root.name, data if reference is None else reference)


def read_wav(path: str | os.PathLike, sample_rate: int | None = None, mono: bool = True) -> np.ndarray:
    """One PCM WAV file as float32 ``[C, T]`` in [-1, 1], optionally resampled to ``sample_rate``."""
    return _read_wav(Path(path), sample_rate, mono)


def _read_wav(path: Path, sample_rate: int | None, mono: bool) -> np.ndarray:
    try:
        with wave.open(str(path), "rb") as f:
            channels, width, rate, frames = f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()
            raw = f.readframes(frames)
    except (wave.Error, EOFError, OSError) as err:
        raise ValueError(f"cannot read WAV file {path}: {err} (only uncompressed PCM WAV is supported)") from None
    if len(raw) < frames * channels * width or frames == 0:
        raise ValueError(f"cannot read WAV file {path}: truncated ({len(raw)} of {frames * channels * width} data bytes)")
    audio = _pcm_to_float(raw, width).reshape(-1, channels).T
    if mono:
        audio = audio.mean(axis=0, keepdims=True)
    if sample_rate is not None and rate != sample_rate:
        audio = resample(audio, rate, sample_rate)
    return audio.astype(np.float32)


def _pcm_to_float(raw: bytes, width: int) -> np.ndarray:
    if width == 1:
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    if width == 3:
        bytes3 = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        values = bytes3[:, 0] | (bytes3[:, 1] << 8) | (bytes3[:, 2] << 16)
        return (np.where(values >= 1 << 23, values - (1 << 24), values)).astype(np.float32) / float(1 << 23)
    if width == 4:
        return np.frombuffer(raw, "<i4").astype(np.float32) / float(1 << 31)
    raise ValueError(f"unsupported sample width of {width} bytes")


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Resample ``[C, T]`` from ``rate`` to ``target`` Hz with scipy's anti-aliased polyphase filter."""
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    return resample_poly(audio, target // g, rate // g, axis=-1)


def _list_wavs(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    found = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if class_dir.is_dir():
            found += [(f, label) for f in sorted(class_dir.rglob("*")) if f.suffix.lower() == ".wav"]
    return found


def _split_files(items: list[tuple[Path, int]], part: str) -> list[tuple[Path, int]]:
    rng = np.random.default_rng(WAV_SPLIT_SEED)
    chosen = []
    for label in sorted({lab for _, lab in items}):
        members = [item for item in items if item[1] == label]
        order = rng.permutation(len(members))
        n_test = int(round(len(members) * WAV_TEST_FRACTION))
        picked = order[:n_test] if part == "test" else order[n_test:]
        chosen += [members[i] for i in sorted(picked)]
    return chosen


def _fit_length(audio: list[np.ndarray], length: int | None) -> np.ndarray:
    channels = {a.shape[0] for a in audio}
    if len(channels) != 1:
        raise ValueError(f"WAV files have different channel counts {sorted(channels)}; load them with mono=True")
    length = length or max(a.shape[1] for a in audio)
    out = np.zeros((len(audio), channels.pop(), length), dtype=np.float32)
    for i, a in enumerate(audio):
        out[i, :, : min(length, a.shape[1])] = a[:, :length]
    return out
