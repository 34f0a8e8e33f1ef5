"""``quickslot``: the command-line client (entry point ``quickslot = "client.cli:main"``).

* ``app``: the parser, ``main`` and running a command (the usage, exit codes and JSON rules are in
  its docstring);
* one module per command group: ``account`` (register, login, logout, whoami), ``browse``
  (categories, shops, shop show, slots), ``bookings`` (book, cancel, confirm, decline, no-show,
  reservations, refused, discard, retry), ``syncing`` (sync, status, following, unfollow),
  ``manage`` (shop create/edit, slot add, staff add, category add), ``peer`` (peer sync, serve);
* shared by them: ``context`` (``Ctx``: the profile and its settings), ``errors`` (``CliError``
  and which exit code each library exception means), ``output`` (JSON rows, tables, event lines),
  ``schemas`` (exit codes and the ``--json`` schemas).

Only the commands that talk to a relay or a peer import the sync service, websockets or httpx.
"""

from client.cli.app import main

__all__ = ["main"]
