"""A RAVDESS look-alike tree: the real names and layout, synthetic faces and voices.

Layout ``release`` (the default: Zenodo's zips all unpacked into one folder):

- ``OUT/Actor_XX/01-VV-EE-II-SS-RR-AA.mp4``  audio-video (H.264 + AAC 48 kHz stereo, 30 fps)
- ``OUT/Actor_XX/02-VV-…mp4``                 the same video without an audio stream
- ``OUT/Audio_Speech_Actors_01-24/Actor_XX/03-01-…wav`` (song: ``Audio_Song_Actors_01-24``), 16-bit 48 kHz

``flat=True`` puts the wavs beside the mp4s in ``OUT/Actor_XX`` (how several mirrors ship it).

Layout ``kaggle`` (the orvile/ravdess-dataset mirror, and Zenodo's zips unpacked one folder per zip):
``OUT/Video_Speech_Actor_XX/Actor_XX/{01,02}-01-…mp4``, ``OUT/Video_Song_Actor_XX/Actor_XX/{01,02}-02-…mp4``,
``OUT/Audio_Speech_Actors_01-24/Actor_XX/03-01-…wav``, ``OUT/Audio_Song_Actors_01-24/Actor_XX/03-02-…wav``.
The files' bytes do not depend on the layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

from avdali.errors import AvdaliError
from avdali.labels import RAVDESS_EMOTIONS
from avdali.synth.clip import ClipJob
from avdali.synth.expression import INTENSITY_SCALE
from avdali.synth.identity import make_identity, seeded_rng
from avdali.synth.jobs import Fault, Progress, SynthSummary, check_size, check_workers, timed_render
from avdali.synth.voice import Speech

ACTORS = range(1, 25)
SPEECH_EMOTIONS = tuple(range(1, 9))
SONG_EMOTIONS = (1, 2, 3, 4, 5, 6)
"""Song has neutral, calm, happy, sad, angry, fearful only."""
NO_SONG_ACTORS = frozenset({18})
FPS = Fraction(30)
MIN_SECONDS, MAX_SECONDS = 2.94, 5.27
LAYOUTS = ("release", "kaggle")
"""``release``: Zenodo's zips unpacked into one folder; ``kaggle``: one folder per zip (the Kaggle mirror)."""
PARTIAL_KINDS = ("no_audio", "no_video", "black_video", "black_no_audio")
"""``partial=True``: the first trial of the first four actors (of the trials planned) becomes a ``01-`` clip lacking a
stream, in this order (fewer actors: the next trials). Not in the real release; for ``avdali shard --keep-partial``."""


@dataclass(frozen=True, order=True)
class Trial:
    """One recording (shared by its 01/02/03 files): the file name's fields except the modality."""

    vocal: int
    """VV: 1 speech, 2 song."""
    emotion: int
    """EE: 1 neutral … 8 surprised (labels.RAVDESS_EMOTIONS)."""
    intensity: int
    """II: 1 normal, 2 strong (neutral: 1 only)."""
    statement: int
    """SS: 1 "Kids are talking by the door", 2 "Dogs are sitting by the door"."""
    repetition: int
    """RR: 1 or 2."""
    actor: int
    """AA: 1 … 24 (odd male, even female)."""

    def stem(self, modality: int) -> str:
        """File name without extension, e.g. ``01-01-03-02-01-01-05``."""
        fields = (modality, self.vocal, self.emotion, self.intensity, self.statement, self.repetition, self.actor)
        return "-".join(f"{v:02d}" for v in fields)

    @property
    def emotion_name(self) -> str:
        return RAVDESS_EMOTIONS[f"{self.emotion:02d}"]


def actor_trials(actor: int, vocal: int) -> list[Trial]:
    """All trials of one actor in one vocal channel: 60 speech (4 neutral, 8 per other emotion) or 44 song."""
    if vocal == 2 and actor in NO_SONG_ACTORS:
        return []
    emotions = SPEECH_EMOTIONS if vocal == 1 else SONG_EMOTIONS
    return [
        Trial(vocal, e, i, s, r, actor)
        for e in emotions
        for i in ((1,) if e == 1 else (1, 2))
        for s in (1, 2)
        for r in (1, 2)
    ]


def pick_trials(trials: list[Trial], k: int | None, rank: int) -> list[Trial]:
    """``k`` trials stratified over emotions: round-robin over the emotions, starting at an emotion that
    rotates with the actor's ``rank`` so a tree of a few actors x few trials still holds every emotion."""
    if k is None or k >= len(trials):
        return sorted(trials)
    emotions = sorted({t.emotion for t in trials})
    queues = {}
    for e in emotions:
        # Vary intensity first, then statement, then repetition; rotate per actor too.
        own = sorted((t for t in trials if t.emotion == e), key=lambda t: (t.repetition, t.statement, t.intensity))
        shift = rank % len(own)
        queues[e] = own[shift:] + own[:shift]
    start = (rank * k) % len(emotions)
    order = emotions[start:] + emotions[:start]
    picked: list[Trial] = []
    while len(picked) < k:
        for e in order:
            if queues[e] and len(picked) < k:
                picked.append(queues[e].pop(0))
    return sorted(picked)


def _actor_list(actors: int | Sequence[int]) -> list[int]:
    if isinstance(actors, int):
        if not 1 <= actors <= 24:
            raise AvdaliError(f"--actors must be between 1 and 24, got {actors}")
        return list(range(1, actors + 1))
    chosen = sorted(set(int(a) for a in actors))
    bad = [a for a in chosen if a not in ACTORS]
    if bad or not chosen:
        raise AvdaliError(f"--actors must name actors 1-24, got {list(actors)}")
    return chosen


def plan_trials(
    *, actors: int | Sequence[int] = 24, trials_per_actor: int | None = None, song: bool = False
) -> list[Trial]:
    """The trials a tree holds (speech, plus song when asked), without rendering anything."""
    if trials_per_actor is not None and trials_per_actor < 1:
        raise AvdaliError(f"--trials must be ≥ 1, got {trials_per_actor}")
    out: list[Trial] = []
    for rank, actor in enumerate(_actor_list(actors)):
        for vocal in (1, 2) if song else (1,):
            out += pick_trials(actor_trials(actor, vocal), trials_per_actor, rank)
    return out


def check_layout(layout: str, flat: bool) -> None:
    if layout not in LAYOUTS:
        raise AvdaliError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if flat and layout != "release":
        raise AvdaliError("--flat is a variant of --layout release (wavs beside the mp4s), not of --layout kaggle")


def trial_paths(out: Path, trial: Trial, *, flat: bool, layout: str = "release") -> tuple[Path, Path, Path]:
    """(audio-video mp4, video-only mp4, audio-only wav) of a trial."""
    actor = f"Actor_{trial.actor:02d}"
    if layout == "kaggle":  # each zip unpacked into a folder named after it
        video_zip = f"Video_{'Speech' if trial.vocal == 1 else 'Song'}_{actor}"
        actor_dir = out / video_zip / actor
    else:
        actor_dir = out / actor
    audio_root = "Audio_Speech_Actors_01-24" if trial.vocal == 1 else "Audio_Song_Actors_01-24"
    wav_dir = actor_dir if flat else out / audio_root / actor
    return actor_dir / f"{trial.stem(1)}.mp4", actor_dir / f"{trial.stem(2)}.mp4", wav_dir / f"{trial.stem(3)}.wav"


def plan_ravdess(
    out: Path,
    *,
    actors: int | Sequence[int] = 24,
    size: tuple[int, int] = (1280, 720),
    trials_per_actor: int | None = None,
    song: bool = False,
    flat: bool = False,
    seed: int = 0,
    layout: str = "release",
    partial: bool = False,
) -> list[ClipJob]:
    """The render jobs of a tree (a dry run: names, durations, identities; nothing is written); ``partial`` marks
    the jobs of ``PARTIAL_KINDS``."""
    size = check_size(size)
    check_layout(layout, flat)
    identities = {}
    jobs = []
    for trial in plan_trials(actors=actors, trials_per_actor=trials_per_actor, song=song):
        if trial.actor not in identities:
            identities[trial.actor] = make_identity(f"Actor_{trial.actor:02d}", female=trial.actor % 2 == 0, seed=seed)
        rng = seeded_rng(seed, "ravdess-timing", trial.stem(0))
        # Clip lengths 2.94-5.27 s with mean ~3.7 s; speech after 0.5-1 s of silence.
        duration = MIN_SECONDS + (MAX_SECONDS - MIN_SECONDS) * rng.beta(2.0, 4.5)
        start = rng.uniform(0.5, 1.0)
        end = max(start + 1.0, duration - rng.uniform(0.35, 0.8))
        mp4, video_only, wav = trial_paths(out, trial, flat=flat, layout=layout)
        jobs.append(
            ClipJob(
                name=trial.stem(1),
                identity=identities[trial.actor],
                emotion=trial.emotion_name,
                intensity=INTENSITY_SCALE["strong" if trial.intensity == 2 else "normal"],
                duration=round(float(duration), 3),
                speech=Speech(start=float(start), end=float(end)),
                fps=FPS,
                size=size,
                seed=(seed, "ravdess", trial.stem(0)),
                mp4_path=mp4,
                video_only_path=video_only,
                wav_path=wav,
            )
        )
    return _with_partial(jobs) if partial else jobs


def _with_partial(jobs: list[ClipJob]) -> list[ClipJob]:
    """The first job of each of the first actors (then the next jobs) turned into the ``PARTIAL_KINDS`` clips."""
    firsts, seen = [], set()
    for i, job in enumerate(jobs):
        actor = job.name.rsplit("-", 1)[1]
        if actor not in seen:
            seen.add(actor)
            firsts.append(i)
    picks = (firsts + [i for i in range(len(jobs)) if i not in firsts])[: len(PARTIAL_KINDS)]
    jobs = list(jobs)
    for i, kind in zip(picks, PARTIAL_KINDS):
        # a clip without a picture has no video-only twin either
        jobs[i] = replace(jobs[i], fault=kind, video_only_path=None if kind == "no_video" else jobs[i].video_only_path)
    return jobs


def make_ravdess(
    out: Path,
    *,
    actors: int | Sequence[int] = 24,
    size: tuple[int, int] = (1280, 720),
    trials_per_actor: int | None = None,
    song: bool = False,
    flat: bool = False,
    seed: int = 0,
    workers: int = 1,
    progress: Progress | None = None,
    layout: str = "release",
    partial: bool = False,
) -> SynthSummary:
    """Write a RAVDESS-like tree under ``out``. ``actors=N`` means actors 1..N, a sequence picks actors;
    ``trials_per_actor=k`` keeps k trials per actor (stratified over emotions, rotated across actors);
    ``layout`` is ``release`` or ``kaggle`` (see the module doc); ``partial`` adds ``01-`` clips lacking a stream
    (``PARTIAL_KINDS``, listed in the summary's ``faults``)."""
    check_workers(workers)
    out = Path(out)
    jobs = plan_ravdess(
        out, actors=actors, size=size, trials_per_actor=trials_per_actor, song=song, flat=flat, seed=seed, layout=layout,
        partial=partial,
    )
    out.mkdir(parents=True, exist_ok=True)
    files, seconds = timed_render(jobs, workers=workers, progress=progress)
    faults = [Fault(job.mp4_path.parent.name, job.name, job.fault, job.mp4_path) for job in jobs if job.fault]
    return SynthSummary(root=out, dataset="ravdess", clips=len(jobs), files=files, seconds=seconds, faults=faults)
