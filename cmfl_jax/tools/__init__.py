"""Side tools: the Durall spectral baseline (`durall`), export of the embedded
benchmark as PNG files + official protocol CSVs (`export_benchmark`)."""
