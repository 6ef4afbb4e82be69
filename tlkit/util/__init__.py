"""Small helpers with no tlkit dependencies and no torch: atomic writes, hashing, units, locations."""
