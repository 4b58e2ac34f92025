"""The console's widgets: tables, the event log, panels, metrics and the footer."""
