"""promptserve models: backbones, the shared prompted encoders, methods, classifier artifacts."""
