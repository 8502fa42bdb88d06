"""Pure statistics over arrays: metrics, the one bootstrap, recalibration."""
