"""Scale-out tests: several relay nodes on one PostgreSQL and one Redis, behind HAProxy."""
