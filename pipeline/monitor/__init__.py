"""Monitoring after go-live (make monitor): drift and calibration statistics, the run."""
