"""account-ops: the operator's command line for a deployed stack (or the local stack)."""
