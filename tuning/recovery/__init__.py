"""Stopping and continuing: signals, and resuming a study whose driver died."""
