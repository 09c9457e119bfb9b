"""Provides the console's reusable widgets: status table, run progress, recent runs, secret forms."""
