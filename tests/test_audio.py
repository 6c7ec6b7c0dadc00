"""Audio input: sources, channels, resampling, and errors that name the file."""

import numpy as np
import pytest
import soundfile as sf
import torch

from spiritlm.audio import AudioError, audio_info, load_audio, resample, save_wav

from fixtures import REAL_FLAC as REAL


def _tone(sr, seconds, freq=220.0):
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_path_bytes_array_tensor_agree(tmp_path):
    wav = _tone(16000, 0.5)
    path = tmp_path / "a.wav"
    save_wav(path, wav, 16000, subtype="FLOAT")
    from_path = load_audio(path)
    from_bytes = load_audio(path.read_bytes())
    from_array = load_audio(wav)
    from_tensor = load_audio(torch.from_numpy(wav))
    for x in (from_path, from_bytes, from_array, from_tensor):
        assert x.dtype == np.float32 and x.shape == (8000,)
        np.testing.assert_allclose(x, wav, atol=1e-6)


def test_resampling_keeps_duration_and_pitch(tmp_path):
    wav = _tone(44100, 1.0, freq=440.0)
    path = tmp_path / "b.flac"
    sf.write(path, wav, 44100)
    out = load_audio(path, target_rate=16000)
    assert out.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 16000 / len(out) - 440.0) < 2.0
    assert resample(wav, 44100, 44100) is wav


def test_stereo_mean_or_channel(tmp_path):
    left, right = _tone(16000, 0.2, 200), _tone(16000, 0.2, 300)
    path = tmp_path / "s.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-6)
    np.testing.assert_allclose(load_audio(path, channel=1), right, atol=1e-6)
    np.testing.assert_allclose(load_audio(np.stack([left, right]), channel=0), left, atol=1e-6)
    with pytest.raises(AudioError, match=r"s\.wav: channel 2 requested but the audio has 2 channels"):
        load_audio(path, channel=2)


def test_int16_arrays_are_scaled():
    x = (np.ones(4000) * 16384).astype(np.int16)
    np.testing.assert_allclose(load_audio(x), 0.5)


def test_array_sample_rate_is_honoured():
    out = load_audio(_tone(8000, 0.5), sample_rate=8000, target_rate=16000)
    assert out.shape == (8000,)


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda d: d / "missing.wav", r"missing\.wav: file not found"),
        (lambda d: _write(d / "text.wav", b"this is not audio at all"), r"text\.wav: not a readable audio file"),
        (lambda d: _write(d / "zero.wav", b""), r"zero\.wav: not a readable audio file"),
        (lambda d: _sf(d / "empty.wav", np.zeros(0, np.float32)), r"empty\.wav: empty audio"),
        (lambda d: _sf(d / "short.wav", np.zeros(1000, np.float32)), r"short\.wav: too short \(62\.5 ms < 80 ms"),
        (lambda d: _sf(d / "nan.wav", np.array([0.1, np.nan, np.inf] + [0.0] * 3000, np.float32)), r"nan\.wav: 2 NaN/Inf samples"),
    ],
)
def test_errors_name_the_file(tmp_path, make, pattern):
    path = make(tmp_path)
    with pytest.raises(AudioError, match=pattern):
        load_audio(path)


def test_errors_for_other_sources():
    with pytest.raises(AudioError, match=r"<bytes>: empty input"):
        load_audio(b"")
    with pytest.raises(AudioError, match=r"<bytes>: not a readable audio file"):
        load_audio(b"RIFF garbage")
    with pytest.raises(AudioError, match=r"clip-7: too short"):
        load_audio(np.zeros(100, np.float32), name="clip-7")
    with pytest.raises(AudioError, match=r"<array>: expected \(samples,\) or \(channels, samples\)"):
        load_audio(np.zeros((2, 2, 2000), np.float32))
    with pytest.raises(AudioError, match=r"unsupported audio source"):
        load_audio(12345)
    with pytest.raises(AudioError, match=r"NaN"):
        load_audio(torch.full((4000,), float("nan")))


@pytest.mark.skipif(not REAL.exists(), reason="shared real utterance not present")
def test_real_librispeech_file():
    info = audio_info(REAL)
    assert (info.sample_rate, info.num_samples, info.channels) == (16000, 146160, 1)
    wav = load_audio(REAL)
    assert wav.shape == (146160,) and np.abs(wav).max() <= 1.0


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _sf(path, wav):
    sf.write(path, wav, 16000, subtype="FLOAT")
    return path
