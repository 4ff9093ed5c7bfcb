"""tlkit built-in plugin: torchvision backbones (work in progress)."""
