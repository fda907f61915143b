"""Every native piece avdali loads, exercised for real and compared with something that can fail: a pip resolve
that installs a wheel which does not load (torchaudio 2.11.1 beside torch 2.11.0) turns CI red here, not at a
user's first batch. Then the parent-process check: a piece that fails to load stops a command with one line."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from typer.testing import CliRunner

from avdali.machine import libraries
from avdali.cli.app import app
from conftest import tiny_run_toml

runner = CliRunner()


@pytest.fixture(autouse=True)
def fresh_probes():
    """Probes are cached per process: each test sees its own (possibly broken) libraries."""
    libraries.forget()
    yield
    libraries.forget()


def test_torchaudio_melspectrogram_peaks_at_the_tone():
    import torch
    import torchaudio

    rate, tone, n_mels = 16000, 1000.0, 64
    wave = torch.sin(2 * torch.pi * tone * torch.arange(rate, dtype=torch.float32) / rate)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=rate, n_fft=512, hop_length=160, n_mels=n_mels,
                                               mel_scale="htk")(wave)
    # bin centres of the HTK mel scale, computed here without torchaudio
    to_mel = lambda hz: 2595 * np.log10(1 + hz / 700)  # noqa: E731
    points = np.linspace(to_mel(0.0), to_mel(rate / 2), n_mels + 2)
    centres = 700 * (10 ** (points[1:-1] / 2595) - 1)
    peak = int(mel.mean(dim=1).argmax())
    assert mel.shape == (n_mels, rate // 160 + 1)
    assert abs(centres[peak] - tone) < (centres[peak + 1] - centres[peak - 1]) / 2


def test_dali_cpu_pipeline_computes_and_decodes_vp9_like_pyav():
    from avdali.data.dali import probe_cpu_pipeline, probe_video_decode

    probe_cpu_pipeline()  # checks its own arithmetic
    webm = libraries.encode_video(libraries.gradient_frames(6, 128), "libvpx-vp9", "webm")
    dali = probe_video_decode(webm, device_id=None)
    pyav = libraries.decode_video(webm, "vp9")
    assert dali.shape == pyav.shape == (6, 128, 128, 3)
    assert np.abs(dali.astype(float) - pyav.astype(float)).mean() < 3


def test_dali_mixed_decoder_pipeline_is_well_formed():
    """The NVDEC probe's graph (device_id 0, ``mixed``) is defined, so argument names are checked, without a GPU."""
    from avdali.data.dali.probes import _probe_video_pipeline

    _probe_video_pipeline(encoded=np.zeros(16, np.uint8), device="mixed", batch_size=1, num_threads=1, device_id=0)


@pytest.mark.parametrize("codec, container, decoder", [("libvpx-vp9", "webm", "vp9"), ("libx264", "mp4", "h264")])
def test_pyav_round_trip(codec, container, decoder):
    frames = libraries.gradient_frames(5, 64)
    decoded = libraries.decode_video(libraries.encode_video(frames, codec, container), decoder)
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(float) - frames.astype(float)).mean() < 8


def test_soundfile_flac_round_trip_is_lossless(tmp_path):
    import soundfile as sf

    samples = np.random.default_rng(0).integers(-20000, 20000, 4000).astype(np.int16)
    sf.write(tmp_path / "a.flac", samples, 16000, format="FLAC", subtype="PCM_16")
    back, rate = sf.read(tmp_path / "a.flac", dtype="int16")
    assert rate == 16000 and np.array_equal(back, samples)


def test_opencv_haar_cascade_loads_and_runs():
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    assert not cascade.empty()
    assert len(cascade.detectMultiScale(np.full((96, 96), 128, np.uint8))) == 0  # a flat grey image has no face


@pytest.mark.parametrize("name", list(libraries.PARTS))
def test_every_probe_passes_here(name):
    works, detail = libraries.check(name)
    assert works, detail


# --- a piece that does not load: one line, non-zero exit, before any worker ---------------------------------


UNDEFINED = "/site-packages/torchaudio/lib/libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace"


def one_error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert len(lines) == 1, result.output
    return lines[0]


def test_broken_torchaudio_stops_train_with_one_line(tmp_path, monkeypatch):
    import torchaudio

    def broken(*args, **kwargs):
        raise OSError(UNDEFINED)  # what torchaudio 2.11.1 raised at its first transform with torch 2.11.0

    monkeypatch.setattr(torchaudio.transforms, "MelSpectrogram", broken)
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_run_toml(tmp_path / "shards", loader="torch"))
    line = one_error_line(runner.invoke(app, ["train", "--config", str(config), "--run-dir", str(tmp_path / "run")]))
    assert f"torchaudio {libraries.version_of('torchaudio')} cannot be used" in line
    assert "undefined symbol: torch_exception_get_what_without_backtrace" in line
    assert "avdali doctor" in line
    assert not (tmp_path / "run").exists()


def test_broken_opencv_stops_shard_with_one_line(tmp_path, monkeypatch):
    def broken():
        raise ImportError("libGL.so.1: cannot open shared object file: No such file or directory")

    monkeypatch.setitem(libraries.PARTS, "opencv-haar", dataclasses.replace(libraries.PARTS["opencv-haar"], probe=broken))
    (tmp_path / "raw").mkdir()
    line = one_error_line(runner.invoke(app, ["shard", "ravdess", str(tmp_path / "raw"), str(tmp_path / "out")]))
    assert "opencv-python-headless" in line and "libGL.so.1" in line and "avdali doctor" in line
    assert not (tmp_path / "out").exists()
