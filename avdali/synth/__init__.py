"""Look-alike raw datasets for tests, benchmarks and the demo: RAVDESS and MELD trees with the real
names, layouts and formats, whose faces and voices carry a learnable emotion signal.

Entry points: ``avdali.synth.ravdess.make_ravdess`` and ``avdali.synth.meld.make_meld``
(CLI: ``avdali synth ravdess|meld OUT``).
"""
