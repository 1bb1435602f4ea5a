"""Lightning training: one module per task, the image-folder DataModule, callbacks, and the run logic."""
