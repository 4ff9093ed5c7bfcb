"""The ``tlkit`` command line (Click): options in, library calls, one-line errors and progress out."""
