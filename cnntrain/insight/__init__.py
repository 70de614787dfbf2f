"""Understanding a network and its training: the loss landscape, its curvature, the learning-rate range test."""
