"""EgoSim: procedurally generated egocentric sessions with features, gaze and NLQ queries."""
