"""The package dataset: its code (dataset.py; readers dpkg.py with its C speed-ups _dpkg_native.c, rpmdb.py,
apk.py), sample event (sample.json) and README.md live here."""
