"""What training reads: a prepared dataset folder -> batches (the datamodule, its dataset and
samplers, the batch contract) and the event log as of a query time. Raw files become that folder
in :mod:`mmrec.ingest`; synthetic folders for tests come from :mod:`mmrec.synthetic`."""
