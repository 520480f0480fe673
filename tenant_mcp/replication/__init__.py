"""What replicas share (credential revocations, tenant events, stream replay) through Redis."""
