"""Training data: the formats the Data Factory and other tools write, validation, chat templates, uploads.

Shared by the API (validation before a job is queued, uploads, listings) and the worker (the data a job
trains on). Nothing here imports torch; a tokenizer is passed in where lengths matter.
"""
