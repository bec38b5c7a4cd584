"""Forge Trainer: the HTTP side of the fine-tuning service (API, settings, database, job states)."""
