"""Tiering: metrics, RFM segments, value tiers, stages, activity and the re-tier job.

Pure functions and SQL over a session passed in; nothing here imports Flask.
"""
