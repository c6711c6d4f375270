"""Load generator and baseline server for the gateway benchmark (``make bench``).

``python -m bench`` runs every measurement against the gateway and against a minimal
``websockets`` broadcast server (``bench.baseline``) in the same run, and writes
``bench/results.json``. See ``bench/cli.py`` for the options.
"""
