"""The ground floor every layer stands on: errors, paths, registries, configs, progress, memory."""
