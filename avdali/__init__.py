"""avdali: high-throughput data loading and training for audio-visual emotion recognition."""

__version__ = "0.1.0"
