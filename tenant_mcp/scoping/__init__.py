"""What each tenant may see and call: the catalogue, the scoped server that answers every list,
call, read and get from it, and the per-tenant subscription bus."""
