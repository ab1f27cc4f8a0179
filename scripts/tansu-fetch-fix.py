#!/usr/bin/env python3
"""A fix to how tansu 0.6.0's object-store engine (`memory://`, the engine the Kafka tests
run on) answers a fetch, applied to an unpacked tansu-storage-0.6.0 crate before
scripts/services.sh builds the broker.

Without it a fetch from an offset inside a record batch returns only the batches that
start at or after that offset: the rest of the batch holding the offset is skipped, and
the consumer's position moves past it. A consumer fetches from inside a batch whenever it
starts at a committed offset that is not a batch boundary, which is what happens when a
partition moves to a new owner after its previous owner handled part of a batch the
producer sent in one request. Records were lost that way in the scale-out kill test: a
killed member had handled offsets 0-3 of a batch holding 0-7, the partition's next owner
fetched from offset 4, and offsets 4-7 were never delivered. Kafka answers such a fetch
with the whole batch holding the offset and the client drops the records below it; with
these edits tansu does the same.

1. The engine's fetch also returns the batch holding the requested offset when the
   offset is not a batch's first.
2. The fetch service moves on from the end of the last batch returned, not from the
   requested offset plus the records returned (which overshoots once a batch starts below
   the requested offset).

Each edit checks that it applied exactly once; the script fails loudly otherwise.
Usage: tansu-fetch-fix.py <path to tansu-storage-0.6.0>
"""

import pathlib
import sys

from tansu_patch import edit


def main() -> None:
    root = pathlib.Path(sys.argv[1])

    path = root / "src/dynostore.rs"
    text = path.read_text()
    if "runnel: fetch fix" not in text:
        # 1. The batch holding the offset comes first when the offset is inside it.
        text = edit(
            text,
            r"for offset in offsets\.split_off\(&offset\) \{",
            "let mut from = offsets.split_off(&offset);\n"
            "        // runnel: fetch fix: an offset inside a batch fetches that whole batch\n"
            "        if !from.contains(&offset) {\n"
            "            if let Some(&holding) = offsets.last() {\n"
            "                _ = from.insert(holding);\n"
            "            }\n"
            "        }\n"
            "\n"
            "        for offset in from {",
            "fetch includes the batch holding the offset",
        )
        path.write_text(text)

    path = root / "src/service/fetch.rs"
    text = path.read_text()
    if "runnel: fetch fix" not in text:
        # 2. The next fetch starts after the last batch returned.
        text = edit(
            text,
            r"offset \+= fetched\s*\.iter\(\)\s*"
            r"\.map\(\|batch\| batch\.record_count as i64\)\s*"
            r"\.sum::<i64>\(\);",
            "// runnel: fetch fix: continue after the last batch returned\n"
            "            if let Some(last) = fetched.last() {\n"
            "                offset = offset.max(last.base_offset + last.last_offset_delta as i64 + 1);\n"
            "            }",
            "fetch service continues after the last batch",
        )
        path.write_text(text)


if __name__ == "__main__":
    main()
