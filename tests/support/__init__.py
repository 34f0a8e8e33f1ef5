"""Test support shared by the test packages and the benchmarks (which may import it).

* ``servers/``: real PostgreSQL, Redis and HAProxy servers on free loopback ports.
* ``relay_process``: ``RelayProcess`` (a relay in its own process) and the REST auth helpers.
* ``sync_helpers``, ``rest_helpers``: talking to a running relay over the websocket and HTTP.
* ``clients``: an in-memory relay stand-in and profile builders for the client tests.
* ``crdt_factory``, ``strategies``: signed documents and Hypothesis strategies over the core.
* ``eventually``: waiting for a condition instead of sleeping.
"""
