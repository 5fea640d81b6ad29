"""Benchmarks of the image stage (not tests): `python -m benchmarks.run --help`."""
