"""Running emitted plans: in one process (tests, ``shardc verify``) or one per rank."""
