"""Sustained load on one relay process: many authenticated connections, a steady update rate.

Can one relay process hold 1,000 concurrent authenticated connections under a
steady update rate across many documents, with no errors and bounded memory? This package answers
it with a real relay (``python -m relay.cli serve`` on a free loopback port, its own data
directory) and real websocket clients in driver processes:

* :mod:`.accounts`: accounts and devices created through the REST API (fewer accounts than
  connections, several devices each, the way households and shop staff share accounts);
* :mod:`.plan`: who subscribes to what, the schedule of signed bookings and what each connection
  must receive;
* :mod:`.driver`: the driver process (the relay suite's load generator, plus ack times and
  progress lines);
* :mod:`.run`: starts everything, samples the relay's memory and CPU every second, reduces;
* :mod:`.report`: the JSON summary and the plot, and the stated memory bound;
* :mod:`.churn`: a companion run that opens and closes all connections in rounds, then stops
  the relay with all of them held (what a held-connections run cannot show).

``python -m benchmarks.load --connections 1000 --duration 120 --docs 200 --rate 100 --out DIR``
(``make load``) runs the full version; ``tests/test_load_short.py`` a 100-connection one.
"""
