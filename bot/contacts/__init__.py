"""Customers as WeCom knows them: the full contact re-sync, interactions (what customers do, once
per source), and the polled moment likes and comments."""
