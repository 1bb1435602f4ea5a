"""Object detection networks (num_classes + 1 outputs, background at index 0)."""
