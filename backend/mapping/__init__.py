"""Mapping: two-view verification, the COLMAP database, camera policy and incremental mapping in a pycolmap child process (:mod:`.reconstruction`)."""
