"""One synthetic clip: a plan (ClipJob, cheap, made up front) and its rendering (frames + voice → files).

A job carries everything that decides its bytes, including its own seed, so a clip comes out the
same whichever worker process renders it and in whatever order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from avdali.synth.expression import expression_for
from avdali.synth.face import draw_face, head_pose, make_background
from avdali.synth.identity import Identity, seeded_rng
from avdali.synth.media import copy_video_only, write_mp4, write_wav
from avdali.synth.voice import Speech, synth_voice

FAULT_KINDS = ("missing", "empty", "truncated", "no_audio", "unlabelled", "no_video", "black_video", "black_no_audio")
"""Known-bad-file imitations (MELD): clip absent, zero bytes, cut mid-file, no audio stream, no CSV row; and the
partial clips ``--keep-partial`` packs: no video stream (audio-only mp4), every frame black (with sound), and
black frames without an audio stream (neither stream usable: skipped even then)."""
BLACK_FAULTS = ("black_video", "black_no_audio")
NO_AUDIO_FAULTS = ("no_audio", "black_no_audio")


@dataclass(frozen=True)
class ClipJob:
    """Everything needed to render one clip's files."""

    name: str
    """Clip id for messages and the summary (RAVDESS trial stem or MELD ``split/diaD_uttU``)."""
    identity: Identity
    """Who acts in it."""
    emotion: str
    """RAVDESS emotion name (MELD emotions are mapped to these names)."""
    intensity: float
    """0..1: how far the expression goes from neutral."""
    duration: float
    """Length in seconds."""
    speech: Speech
    """Where the voice sits inside the clip."""
    fps: Fraction
    """Video frame rate."""
    size: tuple[int, int]
    """Frame (width, height)."""
    seed: tuple
    """Words that seed this clip's jitter and noise (see identity.seeded_rng)."""
    mp4_path: Path | None = None
    """Audio-video mp4 to write (None: none)."""
    video_only_path: Path | None = None
    """Video-only twin (same video, no audio stream) to write beside it (RAVDESS ``02-…``)."""
    wav_path: Path | None = None
    """Audio-only wav to write (RAVDESS ``03-…``)."""
    fault: str | None = None
    """One of FAULT_KINDS to imitate a known bad file, else None."""


def render_clip(job: ClipJob) -> list[Path]:
    """Render and write the job's files; return the paths written."""
    rng = seeded_rng(*job.seed)
    written: list[Path] = []
    if job.fault == "missing":
        return written
    if job.fault == "empty":
        assert job.mp4_path is not None
        job.mp4_path.parent.mkdir(parents=True, exist_ok=True)
        job.mp4_path.write_bytes(b"")
        return [job.mp4_path]

    expr = expression_for(job.emotion, intensity=job.intensity, actor_bias=np.asarray(job.identity.bias), rng=rng)
    # Per-clip lighting: brightness and a slight colour cast, so the tint is a cue, not a key.
    light = rng.uniform(0.9, 1.1) * (1 + rng.normal(0, 0.025, 3))
    person = replace(
        job.identity,
        skin_bgr=tuple(float(v) for v in np.clip(np.asarray(job.identity.skin_bgr) * light, 20, 250)),
        background_bgr=tuple(float(v) for v in np.clip(np.asarray(job.identity.background_bgr) * light, 10, 245)),
    )
    voice = synth_voice(person, expr, duration=job.duration, speech=job.speech, rng=rng)

    width, height = job.size
    n_frames = max(1, int(round(job.duration * float(job.fps))))
    times = np.arange(n_frames) / float(job.fps)
    mouth = 0.35 * voice.envelope_at(times)
    background = make_background(person, width, height)
    phase = float(rng.uniform(0, 2 * np.pi))

    def frames():
        for t, speech_open in zip(times, mouth):
            if job.fault in BLACK_FAULTS:
                yield np.zeros((height, width, 3), np.uint8)
                continue
            frame = background.copy()
            pose = head_pose(person, float(t), width=width, height=height, phase=phase, speech_open=float(speech_open))
            draw_face(frame, person, expr, pose)
            yield frame

    if job.mp4_path is not None:
        job.mp4_path.parent.mkdir(parents=True, exist_ok=True)
        audio = None if job.fault in NO_AUDIO_FAULTS else voice.samples
        write_mp4(job.mp4_path, None if job.fault == "no_video" else frames(), fps=job.fps, size=job.size, audio=audio)
        written.append(job.mp4_path)
        if job.video_only_path is not None:
            job.video_only_path.parent.mkdir(parents=True, exist_ok=True)
            copy_video_only(job.mp4_path, job.video_only_path)
            written.append(job.video_only_path)
        if job.fault == "truncated":
            # Cut the file mid-way: the moov box (written last) is lost, as in a broken download.
            size = job.mp4_path.stat().st_size
            with open(job.mp4_path, "r+b") as f:
                f.truncate(size * 2 // 5)
    if job.wav_path is not None:
        job.wav_path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(job.wav_path, voice.samples)
        written.append(job.wav_path)
    return written
