"""Thin click commands, one per DVC stage, under the one ``protomask`` CLI."""
