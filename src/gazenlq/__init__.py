"""gazenlq: gaze-augmented natural-language query search over long egocentric videos."""

__version__ = "0.1.0"
