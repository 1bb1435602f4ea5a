"""The ``birder-exp`` console command."""
