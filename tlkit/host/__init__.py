"""The plugin host: hookspecs, the pluggy plugin manager, the registry of what plugins offer, and the built-ins."""
