"""Scheduled posting: APScheduler jobs, an exactly-once ledger and the operators' review queue."""
