"""QuickSlot's pure core: documents, records, validation, verdict, wire codec, sync state machine.

Nothing in this package performs I/O, so every rule of the domain is testable with plain calls.
The relay and the client are thin shells around it.
"""

__version__ = "0.1.0"
