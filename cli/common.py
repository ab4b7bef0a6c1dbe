"""What every `mlscope` command shares: its two kinds of failure and how query answers print."""

from __future__ import annotations

import csv
import io
import json


class UsageError(Exception):
    """Bad usage or bad input: reported in one line, exit code 2."""


class CommandFailed(Exception):
    """The input was fine but the work could not be done (a service unreachable): one line, exit 1."""


def render_rows(answer: dict, output_format: str) -> str:
    """A query answer ({"columns", "rows"}) as an aligned table, CSV or JSON text."""
    names = [column["name"] for column in answer["columns"]]
    rows = answer["rows"]
    if output_format == "json":
        return json.dumps({"columns": answer["columns"], "rows": rows}) + "\n"
    cells = [[value if isinstance(value, str) else json.dumps(value) for value in row] for row in rows]
    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(cells)
        return buffer.getvalue()
    widths = [max([len(name)] + [len(row[i]) for row in cells]) for i, name in enumerate(names)]
    lines = ["  ".join(name.ljust(width) for name, width in zip(names, widths))]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines) + "\n"
