"""The HDF5 feature cache: its public format, writing, reading, verification, export and merge."""
