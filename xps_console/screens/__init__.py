"""The console's screens: the dashboard, and the dialogs pushed over it."""
