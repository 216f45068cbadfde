"""Sequence data: the UCR/UEA .ts parser, WAV folders, sequence views and the CPC encoder."""

from __future__ import annotations

import wave

import numpy as np
import pytest
import torch

from selfsup.data.sequence_views import build_sequence_views
from selfsup.data.sequences import load_ucr, load_wav_folder, parse_ts, read_wav
from selfsup.nn.sequence import conv_gru

UNIVARIATE = """# a comment line
@problemName Tiny
@timeStamps false
@missing true
@univariate true
@equalLength true
@seriesLength 5
@classLabel true up down
@data
1,2,3,4,5:up
5,?,3,?,1:down
?,2,2,2,?:up
"""

MULTIVARIATE = """@problemName TinyMulti
@univariate false
@dimensions 2
@equalLength false
@classLabel true a b
@data
0,1,2,3,4:10,11,12,13,14:b
0,2,4:5,6,7:a
"""



def _write(path, text):
    path.write_text(text)
    return path


def test_univariate_ts_with_missing_values_and_labels(tmp_path):
    parsed = parse_ts(_write(tmp_path / "Tiny_TRAIN.ts", UNIVARIATE))
    expected = [[1, 2, 3, 4, 5], [5, 4, 3, 2, 1], [2, 2, 2, 2, 2]]  # '?' filled by linear interpolation / nearest end
    np.testing.assert_allclose(parsed["data"][:, 0], expected)
    assert parsed["data"].dtype == np.float32 and parsed["data"].shape == (3, 1, 5)
    assert parsed["classes"] == ["up", "down"] and parsed["labels"] == ["up", "down", "up"]

    ds = load_ucr(str(tmp_path / "Tiny_TRAIN.ts"), "train")
    assert ds.kind == "sequence" and ds.labels.tolist() == [0, 1, 0]  # @classLabel order, not alphabetical
    assert ds.mean[0] == pytest.approx(np.mean(expected), abs=1e-6)


def test_multivariate_unequal_lengths_resampled_or_padded(tmp_path):
    path = _write(tmp_path / "TinyMulti_TRAIN.ts", MULTIVARIATE)
    resampled = parse_ts(path)["data"]
    assert resampled.shape == (2, 2, 5)
    np.testing.assert_allclose(resampled[1, 0], [0, 1, 2, 3, 4])  # 0,2,4 stretched linearly to 5 steps
    np.testing.assert_allclose(resampled[1, 1], [5, 5.5, 6, 6.5, 7])
    np.testing.assert_allclose(resampled[0, 1], [10, 11, 12, 13, 14])
    padded = parse_ts(path, unequal="pad")["data"]
    np.testing.assert_allclose(padded[1, 0], [0, 2, 4, 0, 0])
    ds = load_ucr("TinyMulti", "train", root=str(tmp_path))  # a name resolves inside root
    assert ds.labels.tolist() == [1, 0] and ds.channels == 2


def test_gunpoint_matches_sktime_loader():
    from sktime.datasets import load_gunpoint

    for split in ("train", "test"):
        ours = load_ucr("GunPoint", split)
        x_ref, y_ref = load_gunpoint(split=split, return_type="numpy3D")
        assert ours.data.shape == x_ref.shape == ((50 if split == "train" else 150), 1, 150)
        np.testing.assert_allclose(ours.data.numpy(), x_ref, atol=1e-6)
        assert [ours.classes[i] for i in ours.labels] == list(y_ref)
    assert load_ucr("GunPoint", "pretrain").data.shape == (50, 1, 150)


def test_ucr_errors_are_one_line_and_actionable(tmp_path):
    with pytest.raises(FileNotFoundError, match="NoSuchProblem_TRAIN.ts not found"):
        load_ucr("NoSuchProblem", "train", root=str(tmp_path))
    bad = _write(tmp_path / "Bad_TRAIN.ts", UNIVARIATE.replace("1,2,3,4,5", "1,2,x,4,5"))
    with pytest.raises(ValueError, match=r"Bad_TRAIN.ts:10: .*numbers or '\?'"):
        parse_ts(bad)
    with pytest.raises(ValueError, match="no @data section"):
        parse_ts(_write(tmp_path / "Empty.ts", "@problemName Empty\n"))
    with pytest.raises(ValueError, match="splits pretrain, train, test"):
        load_ucr("GunPoint", "validation")


def _write_wav(path, signal, rate, width=2, channels=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = {1: 127, 2: 32767}[width]
    ints = np.round(np.clip(signal, -1, 1) * scale).astype(np.int16)
    frames = (ints + 128).astype(np.uint8).tobytes() if width == 1 else ints.astype("<i2").tobytes()
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(frames)


def _sine(freq, rate, seconds):
    return np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)


def test_wav_reading_and_resampling(tmp_path):
    _write_wav(tmp_path / "a.wav", 0.5 * _sine(440, 8000, 0.5), 8000)
    audio = read_wav(tmp_path / "a.wav", sample_rate=16000)
    assert audio.shape == (1, 8000) and audio.dtype == np.float32  # 0.5 s at 16 kHz
    spectrum = np.abs(np.fft.rfft(audio[0]))
    assert np.argmax(spectrum) * 16000 / audio.shape[1] == pytest.approx(440, abs=4)  # pitch preserved
    assert np.abs(audio).max() == pytest.approx(0.5, abs=0.02)

    stereo = np.stack([_sine(100, 16000, 0.1), -_sine(100, 16000, 0.1)], 1).ravel()  # interleaved L, R
    _write_wav(tmp_path / "s.wav", stereo, 16000, channels=2)
    assert np.abs(read_wav(tmp_path / "s.wav")).max() < 1e-3  # mono = mean of opposite channels
    assert read_wav(tmp_path / "s.wav", mono=False).shape == (2, 1600)
    _write_wav(tmp_path / "u8.wav", 0.5 * _sine(100, 16000, 0.1), 16000, width=1)
    np.testing.assert_allclose(read_wav(tmp_path / "u8.wav")[0], 0.5 * _sine(100, 16000, 0.1), atol=0.01)


def test_wav_folder_classes_splits_and_errors(tmp_path):
    for label, freq in (("high", 800), ("low", 200)):
        for i in range(4):
            _write_wav(tmp_path / "clips" / label / f"{i}.wav", _sine(freq, 8000, 0.05 + 0.01 * i), 8000)
    train = load_wav_folder(tmp_path / "clips", "train", sample_rate=16000)
    test = load_wav_folder(tmp_path / "clips", "test", sample_rate=16000)
    assert train.classes == ["high", "low"] and len(train) == 6 and len(test) == 2
    assert sorted(test.labels.tolist()) == [0, 1]  # stratified
    assert train.data.shape == (6, 1, 1280)  # longest file, 0.08 s at 16 kHz; shorter ones zero-padded
    assert test.data.shape[-1] == 1280 and test.mean == train.mean  # training length and statistics
    assert load_wav_folder(tmp_path / "clips", "pretrain", length=500).data.shape == (6, 1, 500)

    (tmp_path / "clips" / "low" / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(ValueError, match=r"cannot read WAV file .*broken\.wav.*on_error='skip'"):
        load_wav_folder(tmp_path / "clips", "train")
    skipped = load_wav_folder(tmp_path / "clips", "train", on_error="skip")
    assert len(skipped) + len(load_wav_folder(tmp_path / "clips", "test", on_error="skip")) == 8
    with pytest.raises(FileNotFoundError, match="WAV folder not found"):
        load_wav_folder(tmp_path / "missing", "train")
    for i in range(2):  # one clip a class: 25 % of it rounds to no test clip
        _write_wav(tmp_path / "pair" / f"c{i}" / "0.wav", _sine(200, 8000, 0.05), 8000)
    with pytest.raises(ValueError, match=r"the 2 WAV files in .*pair leave none for the test split .*pair/train"):
        load_wav_folder(tmp_path / "pair", "test")


def test_truncated_wav_is_reported(tmp_path):
    _write_wav(tmp_path / "t.wav", _sine(100, 8000, 0.1), 8000)
    data = (tmp_path / "t.wav").read_bytes()
    (tmp_path / "t.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="t.wav: truncated"):
        read_wav(tmp_path / "t.wav")


def _ramp_batch(batch=256, channels=1, length=100):
    return torch.arange(length, dtype=torch.float32).expand(batch, channels, length).clone()


def test_crop_resize_keeps_a_scaled_contiguous_piece():
    maker = build_sequence_views({"preset": "sequence_cpc", "crop_scale": (0.4, 0.8)}, 1, 100, [0.0], [1.0])
    (view,) = maker(_ramp_batch())
    assert view.shape == (256, 1, 100)
    steps = view[:, 0, 1:] - view[:, 0, :-1]
    assert torch.allclose(steps, steps[:, :1].expand_as(steps), atol=1e-3)  # still a straight ramp
    kept = (view[:, 0, -1] - view[:, 0, 0]) / 99.0
    assert kept.min() >= 0.4 - 1e-4 and kept.max() <= 0.8 + 1e-4
    assert view.min() >= 0 and view.max() <= 99
    assert kept.std() > 0.08 and view[:, 0, 0].std() > 5  # per-sample fraction and start


def test_fixed_crop_length_windows_and_per_sample_starts():
    maker = build_sequence_views({"preset": "sequence_cpc", "crop_length": 30}, 1, 100, [0.0], [1.0])
    (view,) = maker(_ramp_batch())
    assert view.shape == (256, 1, 30)
    assert torch.equal(view[:, 0] - view[:, 0, :1], torch.arange(30.0).expand(256, 30))  # consecutive steps
    starts = view[:, 0, 0]
    assert starts.min() >= 0 and starts.max() <= 70 and len(starts.unique()) > 40
    with pytest.raises(ValueError, match="crop_length=200 is longer"):
        build_sequence_views({"preset": "sequence_cpc", "crop_length": 200}, 1, 100, [0.0], [1.0])(_ramp_batch())


def test_normalisation_jitter_and_scaling_statistics():
    x = torch.randn(512, 2, 64) * torch.tensor([2.0, 5.0]).view(1, 2, 1) + torch.tensor([1.0, -3.0]).view(1, 2, 1)
    plain = build_sequence_views({"preset": "sequence_cpc"}, 2, 64, [1.0, -3.0], [2.0, 5.0])(x)[0]
    assert torch.allclose(plain.mean((0, 2)), torch.zeros(2), atol=0.02)
    assert torch.allclose(plain.std((0, 2)), torch.ones(2), atol=0.02)

    jittered = build_sequence_views({"preset": "sequence_cpc", "jitter_std": 0.3}, 2, 64, [1.0, -3.0], [2.0, 5.0])(x)[0]
    noise = jittered - plain
    assert noise.std().item() == pytest.approx(0.3, rel=0.03) and abs(noise.mean().item()) < 0.01

    scaled = build_sequence_views({"preset": "sequence_cpc", "scale_std": 0.2}, 2, 64, [1.0, -3.0], [2.0, 5.0])(x)[0]
    factor = scaled / plain
    assert torch.allclose(factor, factor[..., :1].expand_as(factor), atol=1e-4)  # one factor per sample and channel
    assert factor[..., 0].std().item() == pytest.approx(0.2, rel=0.15)
    assert factor[:, 0, 0].ne(factor[:, 1, 0]).all()


def test_channel_permutation_rate_and_two_independent_views():
    x = torch.arange(4.0).view(1, 4, 1).expand(2000, 4, 8).contiguous()
    only_permute = {"crop_scale": (1.0, 1.0), "scale_std": 0.0, "jitter_std": 0.0, "permute_prob": 0.5}
    maker = build_sequence_views({"preset": "sequence_two_views", **only_permute}, 4, 8, [0.0] * 4, [1.0] * 4)
    v1, v2 = maker(x)
    assert maker.num_views == 2
    assert torch.equal(v1.sort(dim=1).values, x)  # each sample's channels are a permutation
    permuted = (v1[:, :, 0] != x[:, :, 0]).any(1).float().mean().item()
    assert permuted == pytest.approx(0.5 * (1 - 1 / 24), abs=0.05)  # identity is one of 24 orders
    assert not torch.equal(v1, v2)


def test_unknown_sequence_preset_or_setting_is_reported():
    with pytest.raises(ValueError, match="unknown sequence view preset 'sequence_x'"):
        build_sequence_views({"preset": "sequence_x"}, 1, 10, [0.0], [1.0])
    with pytest.raises(ValueError, match="unknown sequence view settings"):
        build_sequence_views({"preset": "sequence", "blur": 1}, 1, 10, [0.0], [1.0])


def test_conv_gru_audio_shapes_and_causal_context():
    encoder = conv_gru()  # the paper's audio encoder: total stride 160, 512 channels, GRU 256
    with torch.no_grad():
        z = encoder.latents(torch.randn(1, 1, 20480))
        assert z.shape == (1, 128, 512) and encoder.contexts(z).shape == (1, 128, 256)
        assert encoder.pool_contexts(encoder.contexts(z)).shape == (1, encoder.out_dim) == (1, 256)

    small = conv_gru(in_channels=3, width=32, context_dim=16, strides=[2, 2, 1], kernels=[4, 4, 3], norm="layer").eval()
    x = torch.randn(2, 3, 160)
    z, c = small.latents(x), small.contexts(small.latents(x))
    assert z.shape == (2, 40, 32) and c.shape == (2, 40, 16)
    x_changed = x.clone()
    x_changed[..., 120:] += 1.0  # the future changes ...
    c_changed = small.contexts(small.latents(x_changed))
    assert torch.allclose(c[:, :25], c_changed[:, :25])  # ... contexts of earlier steps do not
    assert not torch.allclose(c[:, -1], c_changed[:, -1])
    with pytest.raises(ValueError, match="fewer than 2 CPC steps"):
        conv_gru(input_size=150)
