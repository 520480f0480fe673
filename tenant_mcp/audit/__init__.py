"""What leaves the server, on the record: the audit trail (`log`), where it goes next (`sinks`)
and the outbound leak guard (`leakguard`)."""
