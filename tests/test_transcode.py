"""Per-clip transcode: tiny H.264+AAC sources made here with PyAV, checked against independent decodes."""

from __future__ import annotations

import io
import math
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import soundfile as sf

from avdali.packing import face as facemod
from avdali.packing.transcode import DETECT_EVERY, ClipError, Transcoded, transcode_clip
from avdali.shardformat import AUDIO_RATE
from avdali.shardformat.options import PackOptions


def draw_face(img: np.ndarray, cx: int, cy: int, half_width: int) -> None:
    """A cartoon face (skin ellipse, dark brows, eyes, nose, mouth) that OpenCV's Haar cascade finds."""
    s = half_width
    cv2.ellipse(img, (cx, cy), (s, int(s * 1.3)), 0, 0, 360, (200, 170, 150), -1)
    for side in (-1, 1):
        ex, ey = cx + side * int(s * 0.42), cy - int(s * 0.3)
        cv2.ellipse(img, (ex, ey - int(s * 0.22)), (int(s * 0.25), int(s * 0.06)), 0, 0, 360, (50, 40, 40), -1)
        cv2.ellipse(img, (ex, ey), (int(s * 0.2), int(s * 0.1)), 0, 0, 360, (30, 30, 30), -1)
    cv2.ellipse(img, (cx, cy + int(s * 0.25)), (int(s * 0.1), int(s * 0.08)), 0, 0, 360, (130, 100, 90), -1)
    cv2.ellipse(img, (cx, cy + int(s * 0.65)), (int(s * 0.35), int(s * 0.09)), 0, 0, 360, (120, 60, 60), -1)


def make_clip(
    path: Path,
    *,
    width: int = 256,
    height: int = 144,
    fps: int = 30,
    seconds: float = 1.0,
    audio: bool = True,
    video: bool = True,
    face: tuple[int, int, int] | None = None,
    face_drift: int = 0,
    audio_rate: int = 48_000,
    channels: int = 2,
    pix_fmt: str = "yuv420p",
    faststart: bool = False,
) -> Path:
    """An H.264 + AAC mp4 like the datasets': moving colours (plus an optional cartoon face at
    ``(cx, cy, half_width)`` drifting right by ``face_drift`` px over the clip) and a 440 Hz tone."""
    num_frames = round(seconds * fps)
    options = {"movflags": "faststart"} if faststart else {}  # moov first: a cut file still opens
    with av.open(str(path), "w", format="mp4", options=options) as out:
        vs = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"}) if video else None
        if vs is not None:
            vs.width, vs.height, vs.pix_fmt = width, height, pix_fmt
        as_ = out.add_stream("aac", rate=audio_rate, layout="stereo" if channels == 2 else "mono") if audio else None
        if vs is not None:
            yy, xx = np.mgrid[0:height, 0:width]
            for i in range(num_frames):
                img = np.empty((height, width, 3), np.uint8)
                img[..., 0] = (xx + 4 * i) % 256
                img[..., 1] = (yy * 2 + 3 * i) % 256
                img[..., 2] = 90
                if face is not None:
                    cx, cy, s = face
                    img[:] = 60  # a flat background so only the face looks like one
                    draw_face(img, cx + face_drift * i // max(1, num_frames - 1), cy, s)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = i
                out.mux(vs.encode(frame))
            out.mux(vs.encode(None))
        if as_ is not None:
            total = round(seconds * audio_rate)
            t = np.arange(total) / audio_rate
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            planes = np.stack([tone] * channels)
            step = 1024
            for start in range(0, total, step):
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(planes[:, start : start + step]), format="fltp", layout=as_.layout.name
                )
                frame.sample_rate, frame.pts = audio_rate, start
                out.mux(as_.encode(frame))
            out.mux(as_.encode(None))
    return path


OPTS = PackOptions(size=128, fps=15, max_seconds=10.0)


def decode_webm(webm: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(webm)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("transcode_src")
    good = make_clip(d / "good.mp4", seconds=1.0)
    paths = {
        "good": good,
        "long": make_clip(d / "long.mp4", seconds=3.0, fps=24),
        "slow": make_clip(d / "slow.mp4", seconds=1.0, fps=10),
        "face": make_clip(d / "face.mp4", width=640, height=360, seconds=1.0, face=(260, 170, 60), face_drift=80),
        "no_audio": make_clip(d / "no_audio.mp4", audio=False),
        "no_video": make_clip(d / "no_video.mp4", video=False),
    }
    (d / "empty.mp4").write_bytes(b"")
    paths["empty"] = d / "empty.mp4"
    data = good.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    paths["truncated"] = d / "truncated.mp4"
    (d / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    paths["random"] = d / "random.mp4"
    streamable = make_clip(d / "streamable.mp4", seconds=1.0, faststart=True).read_bytes()
    (d / "cut_streamable.mp4").write_bytes(streamable[: len(streamable) * 4 // 5])
    paths["cut_streamable"] = d / "cut_streamable.mp4"
    return paths


@pytest.fixture(scope="module")
def good(clips) -> Transcoded:
    return transcode_clip(clips["good"], OPTS)


def test_output_shape_fps_and_counts(good: Transcoded):
    frames = decode_webm(good.webm)
    assert good.frames == len(frames) == 15  # 30 frames at 30 fps → every other one
    assert all(f.shape == (128, 128, 3) for f in frames)
    assert good.fps == 15.0
    assert good.duration_s == pytest.approx(1.0)
    with av.open(io.BytesIO(good.webm)) as c:
        assert c.streams.video[0].codec_context.name == "vp9"
        assert c.format.name.startswith("matroska")
    assert good.source["width"] == 256 and good.source["height"] == 144
    assert good.source["video_codec"] == "h264" and good.source["audio_codec"] == "aac"
    assert good.source["audio_rate"] == 48_000 and good.source["channels"] == 2
    assert good.source["fps"] == pytest.approx(30.0)


def test_flac_is_16k_mono_and_matches_video_length(good: Transcoded):
    data, rate = sf.read(io.BytesIO(good.flac), dtype="int16")
    info = sf.info(io.BytesIO(good.flac))
    assert rate == AUDIO_RATE and data.ndim == 1 and info.subtype == "PCM_16" and info.format == "FLAC"
    assert good.audio_samples == len(data)
    assert abs(len(data) / AUDIO_RATE - good.duration_s) < 0.1
    # The 440 Hz tone survives the downmix and resampling (peak of the spectrum).
    spectrum = np.abs(np.fft.rfft(data[2000:10000].astype(np.float64)))
    assert np.fft.rfftfreq(8000, 1 / AUDIO_RATE)[spectrum.argmax()] == pytest.approx(440, abs=3)
    # Stereo 0.3-amplitude tone on both channels → mono 0.3 (averaged, not summed into clipping).
    assert np.abs(data[2000:10000]).max() / 32768 == pytest.approx(0.3, abs=0.03)


def test_deterministic_bytes(clips, good: Transcoded):
    again = transcode_clip(clips["good"], OPTS)
    assert again.webm == good.webm and again.flac == good.flac


def test_duration_cap_and_frame_dropping(clips):
    out = transcode_clip(clips["long"], PackOptions(size=128, fps=15, max_seconds=2.0))
    assert out.frames == 30 and out.duration_s == pytest.approx(2.0)
    assert out.audio_samples == 2 * AUDIO_RATE
    assert out.source["duration_s"] == pytest.approx(3.0, abs=0.1)


def test_never_more_frames_than_source(clips):
    out = transcode_clip(clips["slow"], OPTS)  # 10 fps source, 15 fps asked
    assert out.frames == 10 and out.fps == pytest.approx(10.0)
    assert out.duration_s == pytest.approx(1.0)


def test_ntsc_rate_below_target_keeps_every_frame(tmp_path):
    src = make_clip(tmp_path / "ntsc.mp4", fps=Fraction(30000, 1001), seconds=2.0)
    out = transcode_clip(src, PackOptions(size=128, fps=30, max_seconds=5))
    assert out.fps == pytest.approx(29.97, abs=0.001)
    assert out.frames == out.source["frames"] == 60


def test_frames_follow_source_timestamps(tmp_path):
    """Each stored frame is the source frame at its slot: compare against a reference resize."""
    src = make_clip(tmp_path / "s.mp4", width=256, height=256, fps=30, seconds=0.5)
    out = transcode_clip(src, PackOptions(size=128, fps=10, max_seconds=5))
    with av.open(str(src)) as c:
        source = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    stored = decode_webm(out.webm)
    assert len(stored) == 5  # 15 source frames at 30 fps → slots 0..4 at 10 fps
    for k, frame in enumerate(stored):
        reference = cv2.resize(source[3 * k], (128, 128), interpolation=cv2.INTER_AREA)
        assert np.abs(frame.astype(int) - reference).mean() < 8  # VP9 at crf 30 on smooth gradients
        if k + 1 < len(stored):  # and not a neighbour frame (the pattern moves 4 px per frame)
            wrong = cv2.resize(source[3 * k + 1], (128, 128), interpolation=cv2.INTER_AREA)
            assert np.abs(frame.astype(int) - reference).mean() < np.abs(frame.astype(int) - wrong).mean()


@pytest.mark.parametrize(
    "name, reason",
    [
        ("empty", "zero-byte file"),
        ("no_audio", "no audio stream"),
        ("no_video", "no video stream"),
        ("truncated", "corrupt video"),
        ("random", "corrupt video"),
        ("cut_streamable", "corrupt "),
    ],
)
def test_bad_inputs_raise_clip_error(clips, name, reason):
    with pytest.raises(ClipError) as info:
        transcode_clip(clips[name], OPTS)
    message = str(info.value)
    assert message.startswith(reason) and "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(ClipError, match="cannot read"):
        transcode_clip(tmp_path / "nope.mp4", OPTS)


def test_haar_finds_the_drawn_face_and_crop_follows(clips):
    out = transcode_clip(clips["face"], OPTS)
    assert out.face == "detected"
    x, y, side = out.face_box
    # Face centred near (260 + 40, 170) (drift 80 px over the clip), ellipse 120 x 156 px.
    assert abs(x + side / 2 - 300) < 30 and abs(y + side / 2 - 170) < 30
    assert 150 <= side <= 300
    # The skin colour fills the middle of the stored crop, not the grey background.
    middle = decode_webm(out.webm)[0][48:80, 48:80].reshape(-1, 3).mean(0)
    assert middle[0] > 140 and middle[0] > middle[2] + 20


def test_no_face_falls_back_to_centre_crop(clips, good: Transcoded):
    assert good.face == "centre" and good.face_box is None
    with av.open(str(clips["good"])) as c:
        source = next(c.decode(video=0)).to_ndarray(format="rgb24")
    stored = decode_webm(good.webm)[0].astype(int)
    centre = cv2.resize(source[:, 56:200], (128, 128), interpolation=cv2.INTER_AREA)  # 144 px square of 256 x 144
    left = cv2.resize(source[:, :144], (128, 128), interpolation=cv2.INTER_AREA)
    assert np.abs(stored - centre).mean() < 8 < np.abs(stored - left).mean()


def test_injected_detector_gets_small_grey_frames(clips):
    seen = []

    def fake(grey):
        seen.append(grey.shape)
        return []

    out = transcode_clip(clips["face"], OPTS, detector=fake)
    assert out.face == "centre"
    assert seen and all(s == (180, 320) for s in seen)  # 640x360 shrunk to DETECT_WIDTH
    assert len(seen) == math.ceil(out.frames / DETECT_EVERY)


def test_webm_decodes_in_dali_cpu(good: Transcoded, tmp_path):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, types

    @dali.pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        encoded = fn.external_source(source=lambda: [np.frombuffer(good.webm, np.uint8)], batch=True, dtype=types.UINT8)
        return fn.decoders.video(encoded, device="cpu")

    p = pipe()
    p.build()
    (frames,) = p.run()
    video = np.array(frames.as_tensor())[0]
    assert video.shape == (good.frames, 128, 128, 3)
    reference = np.stack(decode_webm(good.webm))
    assert np.abs(video.astype(int) - reference).mean() < 3


def test_odd_size_444_source_and_mono_44k(tmp_path):
    src = make_clip(
        tmp_path / "odd.mp4", width=255, height=143, fps=25, pix_fmt="yuv444p", audio_rate=44_100, channels=1
    )
    out = transcode_clip(src, OPTS)
    assert out.frames == 15 and out.source["width"] == 255 and out.source["channels"] == 1
    assert abs(out.audio_samples / AUDIO_RATE - 1.0) < 0.05
    assert all(f.shape == (128, 128, 3) for f in decode_webm(out.webm))


# --- face track: sparse detections → smooth, clamped, even square boxes --------------------------


def test_track_side_is_enlarged_median_and_centre_interpolates():
    # A face moving right 10 px per frame, detected every 5 frames with one odd-sized detection.
    detections = {k: (100.0 + 10 * k, 150.0, 60.0) for k in range(0, 21, 5)}
    detections[10] = (200.0, 150.0, 90.0)
    boxes = facemod.smooth_track(detections, 21, 640, 360)
    assert len(boxes) == 21
    assert {b.side for b in boxes} == {90}  # median side 60 x ENLARGE 1.5, not pulled by the 90
    centres = [b.x + b.side / 2 for b in boxes]
    # Linear motion survives the moving average inside the track; between detections it glides 10 px/frame.
    assert centres[7] == pytest.approx(170, abs=2) and centres[12] == pytest.approx(220, abs=2)
    assert all(b - a >= 0 for a, b in zip(centres, centres[1:]))
    assert all(b.x % 2 == 0 and b.y % 2 == 0 and b.side % 2 == 0 for b in boxes)


def test_track_damps_jitter_and_drops_outliers():
    rng = np.random.default_rng(0)
    detections = {k: (300 + rng.normal(0, 6), 180 + rng.normal(0, 6), 80.0) for k in range(0, 60, 5)}
    detections[25] = (40.0, 40.0, 70.0)  # a false positive far from the face
    detections[30] = None  # a frame where nothing was found
    boxes = facemod.smooth_track(detections, 60, 640, 360)
    xs = np.array([b.x + b.side / 2 for b in boxes])
    raw = np.array([d[0] for k, d in detections.items() if d is not None and k != 25])
    assert np.all(np.abs(xs - 300) < 15)  # the outlier at x=40 did not drag the crop
    assert np.std(xs) < np.std(raw)


def test_track_is_clamped_inside_the_frame():
    boxes = facemod.smooth_track({0: (10.0, 10.0, 100.0)}, 3, 640, 360)
    assert all((b.x, b.y, b.side) == (0, 0, 150) for b in boxes)
    boxes = facemod.smooth_track({0: (630.0, 350.0, 400.0)}, 1, 640, 360)
    assert (boxes[0].x, boxes[0].y, boxes[0].side) == (280, 0, 360)  # too big: shrunk to the frame, flush right


def test_track_without_detections_is_none_and_centre_box():
    assert facemod.smooth_track({}, 10, 640, 360) is None
    assert facemod.smooth_track({0: None, 5: None}, 10, 640, 360) is None
    assert facemod.centre_box(640, 360) == facemod.CropBox(140, 0, 360)
    assert facemod.centre_box(255, 143) == facemod.CropBox(56, 0, 142)


def test_median_box_and_largest_face():
    boxes = [facemod.CropBox(10, 20, 100), facemod.CropBox(30, 20, 100), facemod.CropBox(20, 40, 100)]
    assert facemod.median_box(boxes) == [20, 20, 100]
    assert facemod.largest_face([(0, 0, 10, 10), (50, 20, 30, 30)], 4.0) == (260.0, 140.0, 120.0)
    assert facemod.largest_face([], 4.0) is None


def _grey_with_faces(faces: list[tuple[int, int, int]], width: int = 640, height: int = 360) -> np.ndarray:
    img = np.full((height, width, 3), 60, np.uint8)
    for cx, cy, half_width in faces:
        draw_face(img, cx, cy, half_width)
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def test_face_finder_tracks_the_same_person_then_falls_back():
    finder = facemod.FaceFinder()
    first = finder(_grey_with_faces([(160, 180, 50)]))
    assert first is not None and abs(first[0] - 160) < 15 and abs(first[1] - 180) < 25
    # A second, bigger face appears: a whole-frame search picks the biggest, the tracker keeps the first.
    both = _grey_with_faces([(165, 180, 50), (470, 170, 75)])
    whole = facemod.largest_face(facemod.haar_detect(facemod.detection_image(both)[0]), 2.0)
    assert whole is not None and abs(whole[0] - 470) < 20
    tracked = finder(both)
    assert tracked is not None and abs(tracked[0] - 165) < 15
    # The tracked face leaves: the whole frame is searched again.
    moved = finder(_grey_with_faces([(470, 170, 75)]))
    assert moved is not None and abs(moved[0] - 470) < 20


def _keyframes(webm: bytes) -> list[int]:
    """Indices of the packets PyAV reads as keyframes."""
    with av.open(io.BytesIO(webm)) as c:
        packets = [p for p in c.demux(c.streams.video[0]) if p.size]
    return [i for i, p in enumerate(packets) if p.is_keyframe]


def test_keyint_default_is_one_keyframe_per_clip_and_keyint_4_adds_keyframes(clips, good: Transcoded):
    from dataclasses import replace

    from avdali.packing.encode import GOP_FRAMES

    assert OPTS.keyint == 0 and _keyframes(good.webm) == [0]  # 15 frames, one keyframe: what --keyint 0 always gave
    assert transcode_clip(clips["good"], replace(OPTS, keyint=GOP_FRAMES)).webm == good.webm  # 0 means that interval
    four = transcode_clip(clips["good"], replace(OPTS, keyint=4))
    assert _keyframes(four.webm) == [0, 4, 8, 12]
    assert four.frames == good.frames and four.webm != good.webm


def test_keyint_is_recorded_only_when_set_and_checked():
    from avdali.errors import AvdaliError
    from avdali.packing.run import _manifest_options

    assert "keyint" not in PackOptions().content_options()  # manifests of default packs stay byte-identical
    assert "keyint" not in _manifest_options(PackOptions())
    assert PackOptions(keyint=4).content_options()["keyint"] == _manifest_options(PackOptions(keyint=4))["keyint"] == 4
    for bad in (-1, 1001, 2.5, True):
        with pytest.raises(AvdaliError, match="--keyint must be an integer"):
            PackOptions(keyint=bad)
