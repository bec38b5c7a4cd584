"""Forge Trainer's worker: pulls jobs from the queue and trains each in a child process."""
