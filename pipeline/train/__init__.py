"""The stages of a training run (run.py orchestrates them): validation design, tuning,
assessment, instability, the quality gate, promotion, what the run logs, the learning curve."""
