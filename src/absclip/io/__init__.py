"""Data in and out: image decoding, data sources, parallel loading, prediction records (JSONL, Parquet), files."""
