"""Provides the console's screens: Status, Settings, Storage, and small dialogs."""
