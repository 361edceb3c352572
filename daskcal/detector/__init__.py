"""Detector stage (detector1): saturation, jump detection, ramp fitting."""
