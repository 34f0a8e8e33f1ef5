"""Real servers the scale-out tests start themselves (PostgreSQL here; Redis and HAProxy beside it).

Each helper starts its server in a private temporary directory on a free loopback port, stops it
(and removes the directory) on exit, and tells pytest to *skip* with a clear reason when the
server's binaries are missing: ``tools/ensure-servers`` (run by ``make test``) installs them from
the system's packages on a fresh machine, so a skip means that step could not run.
"""
