"""Self-supervised learning networks, built around a backbone."""
