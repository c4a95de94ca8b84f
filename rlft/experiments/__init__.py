"""Experiments built from the trainers: `compare.py` runs several methods over seeds and reports."""
