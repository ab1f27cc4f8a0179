"""The edit helper of the scripts that fix tansu's source before scripts/services.sh builds
it (tansu-group-fix.py, tansu-fetch-fix.py)."""

import pathlib
import re
import sys


def edit(text: str, pattern: str, replacement: str, what: str) -> str:
    """Replaces the one match of `pattern`; exits naming the calling script and `what`
    when there is not exactly one."""
    new, count = re.subn(pattern, replacement, text, flags=re.S)
    if count != 1:
        script = pathlib.Path(sys.argv[0]).stem
        sys.exit(f"{script}: {what}: expected one match, found {count}")
    return new
