"""Data side of protomask: readers, segmenters, shards, crops, indexes."""
