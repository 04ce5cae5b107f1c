"""Doctest collection: the kvpress integration imports only where kvpress is installed."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("kvpress") else ["kvpress.py"]
