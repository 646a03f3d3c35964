"""cmcl: continual multimodal contrastive learning, as a library and a reproducible pipeline."""

__version__ = "0.1.0"
