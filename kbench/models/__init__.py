"""The model zoo: the plug-in API every entry implements, the registry, shared model parts, training loops."""
