"""Research scripts run from the repository root (``python -m tools.<name>``), outside the
installed package: e.g. ``tools.probe``, probes that need EgoSim's hidden ground truth."""
