"""Gaze maps: GLC-style heatmaps from Ego4D gaze and the metrics that score predicted maps."""
