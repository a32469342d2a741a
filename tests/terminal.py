"""Running a program on a real pseudo-terminal, and reading what it shows.

Progress bars redraw with ``\\r`` only when their stream is a terminal, so a
pipe never shows what a user sees: these helpers give the program a
pseudo-terminal of a chosen width and replay its output as the screen would.
"""

import fcntl
import os
import pty
import struct
import subprocess
import termios


def screen(raw: str) -> tuple[list[str], list[str]]:
    """What a terminal shows (its lines), and every redraw written."""
    lines, redraws = [], []
    for line in raw.split("\n"):
        shown = ""
        for part in line.split("\r"):
            redraws.append(part)
            shown = part + shown[len(part) :]
        lines.append(shown.rstrip())
    return lines, redraws


def run_in_a_terminal(argv: list[str], columns: int, cwd=None) -> str:
    """Runs ``argv`` with stdin, stdout and stderr on a pseudo-terminal.

    Returns everything the program wrote, with the terminal's ``\\r\\n``
    line ends made ``\\n`` (a bare ``\\r`` is a redraw and stays).
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    raw = b"".join(chunks).decode().replace("\r\n", "\n")
    assert proc.wait(timeout=300) == 0, raw
    return raw
