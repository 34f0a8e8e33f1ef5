"""Machinery of the ``relay`` benchmark suite (``benchmarks/suites/relay.py``).

* :mod:`.servers`: the servers compared (the QuickSlot relay as a real process, the same hub
  served without ASGI, y-websocket on Node, pycrdt-websocket), started on loopback ports;
* :mod:`.direct_server`: the ASGI-free QuickSlot sync server (the experiment of docs/design.md, "Relay");
* :mod:`.node`: installs the y-websocket server into ``bench-results/.node``;
* :mod:`.payloads`: pre-signed booking updates and same-size Yjs updates, with markers;
* :mod:`.loadgen`: the websocket clients, in worker processes;
* :mod:`.orchestrate`: runs the workers against one server and samples its CPU and memory;
* :mod:`.experiments`: fan-out, many documents, catch-up, idle documents;
* :mod:`.procs`: processes, ports, ``/proc`` readings.

``python -m benchmarks run --suite relay [--quick]`` runs the suite (registered in
``benchmarks/suites/__init__.py``; ``python -m benchmarks.relay_bench run`` is the same);
``python -m benchmarks.relay_bench table DIR`` prints the headline tables of a saved run.
"""
