"""The backbone contract: what every backbone plugin implements, its spec, blocks, fingerprints and weight files."""
