"""tlkit built-in plugin: timm backbones (work in progress)."""
