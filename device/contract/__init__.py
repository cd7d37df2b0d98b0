"""What the runtime and the cloud agent share, depending on neither: record types, the spool
(outbox), the local control channel, the model card, the configuration schema and loader, file
helpers (atomic writes, modes, timestamps) and the error types."""
