"""Machinery every stage shares: records, the artifact store, video I/O, models and CLIP."""
