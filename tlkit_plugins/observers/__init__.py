"""Built-in run observers: tracking tools a recipe turns on under ``observers:``."""
