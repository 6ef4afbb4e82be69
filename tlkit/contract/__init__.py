"""The plugin contract: hook specs, the records plugins register, their options, the registries and the plugin manager."""
