"""Built-in plugins. Each is an ordinary plugin module using the public ``queuectl.hookimpl``."""
