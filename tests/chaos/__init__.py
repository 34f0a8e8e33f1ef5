"""The chaos run: client processes booking through a fault proxy while relay and clients are SIGKILLed."""
