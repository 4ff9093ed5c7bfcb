"""tlkit built-in plugin: hf backbones (work in progress)."""
