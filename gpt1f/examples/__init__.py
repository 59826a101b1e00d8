"""Notebook-style walk-throughs, runnable as modules (``python -m gpt1f.examples.NAME``)."""
