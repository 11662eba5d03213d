"""The login dataset: its code (dataset.py, files.py, utmp.py, watch.py), sample event (sample.json) and README.md live here."""
