"""Explanations of both streams: attribution maps, sanity checks, pictures."""
