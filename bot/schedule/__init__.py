"""Scheduling: the declared job list, the APScheduler service with its single-runner lock, and the
job functions it runs (each a thin call into the domain packages)."""
