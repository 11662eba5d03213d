"""The package dataset: its code (dataset.py; readers dpkg.py, rpmdb.py, apk.py), sample event (sample.json) and
README.md live here."""
