"""tlkit's built-in plugins, installed as ``tlkit_plugins``; they register exactly as third-party ones do."""
