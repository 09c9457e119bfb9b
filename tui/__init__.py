"""Provides the appliance-backup console: a Textual app over the backup core."""
