"""The extraction engine: items in, pooled embeddings out, streamed into a crash-safe HDF5 cache."""
