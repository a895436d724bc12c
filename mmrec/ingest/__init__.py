"""`mmrec prepare`: raw Amazon review files (or tabular files) -> the dataset folder: official
sources and downloads, readers, cleaning, the split and the folder's files. Ingestion knows
nothing of batches beyond the per-event fields declared once in :mod:`mmrec.data.batch`."""
