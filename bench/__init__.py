"""The icans-risk benchmark suite (issue 4): `python -m bench.run [--quick]`."""
