"""inpctl: the command line for INP-Former (train, eval, bench)."""
