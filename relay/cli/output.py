"""What ``quickslot-relay`` prints for people (``--json`` prints the result as it is)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any


def print_human(args: argparse.Namespace, result: Any) -> None:
    if args.command == "user" and args.user_command == "list":
        rows = result
        if not rows:
            print("no users")
            return
        headers = ["EMAIL", "NAME", "ROLES", "OWNER OF", "STAFF OF", "STATUS", "ID"]
        table = [
            [
                r["email"],
                r["display_name"],
                ",".join(r["roles"]) or "-",
                ",".join(r["owner_of"]) or "-",
                ",".join(r["staff_of"]) or "-",
                "disabled" if r["disabled"] else "active",
                r["id"],
            ]
            for r in rows
        ]
        widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
        for row in [headers, *table]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        return
    if args.command == "user" and args.user_command == "import":
        for row in result["skipped"]:
            print(f"line {row['line']}: skipped: {row['reason']}")
        print(f"imported {len(result['imported'])} accounts, skipped {len(result['skipped'])}")
        return
    if args.command == "user":
        verb = {"add": "added", "disable": "disabled", "enable": "enabled", "grant": "updated"}[
            args.user_command
        ]
        extra = []
        if result["roles"]:
            extra.append("roles: " + ",".join(result["roles"]))
        if result["owner_of"]:
            extra.append("owner of: " + ",".join(result["owner_of"]))
        if result["staff_of"]:
            extra.append("staff of: " + ",".join(result["staff_of"]))
        suffix = f" ({'; '.join(extra)})" if extra else ""
        print(f"{verb} {result['email']} [{result['id']}]{suffix}")
        return
    if args.command == "keys" and args.keys_command == "rotate":
        print(f"new active key {result['active_kid']} (retired {result['retired_kid']})")
        return
    if args.command == "keys":
        for k in result:
            state = "active" if k["active"] else f"retired {k['retired_at']}"
            print(f"{k['kid']}  created {k['created_at']}  {state}")
        return
    if args.command == "compact":
        print(f"compacted {result['compacted']} document(s)")
        return
    if args.command == "stats":
        print(f"epoch: {result['epoch']}")
        for section, values in result.items():
            if isinstance(values, Mapping):
                print(f"{section}:")
                for key, value in values.items():
                    print(f"  {key}: {value}")
        return
    print(result)
