"""The user dataset: its code (dataset.py), sample event (sample.json) and README.md live here."""
