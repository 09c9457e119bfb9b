"""Provides the appliance-backup core: no Textual import anywhere below here.

The console (tui/, screens/, widgets/) and the headless command (backup.cli)
both drive the core through `backup.service.BackupService`.
"""

__version__ = "0.1.0"
