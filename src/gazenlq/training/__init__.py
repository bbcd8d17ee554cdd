"""PyTorch models and training of the gaze estimator and grounding models (issue 5)."""
