"""Reading datasets and writing results: files in, files out."""
