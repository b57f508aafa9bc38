"""Stages: each takes an artifact (or a teacher checkpoint) and a typed config and writes a new artifact."""
