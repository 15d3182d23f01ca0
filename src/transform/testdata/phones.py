#!/usr/bin/env python3
"""Regenerates phones.tsv: each (region, raw) as libphonenumber reads it, by the Python
`phonenumbers` library of the same metadata version as the `phonenumber` crate (9.0.33):

    pip install --target /tmp/pn phonenumbers==9.0.33
    PYTHONPATH=/tmp/pn python3 src/transform/testdata/phones.py < cases.tsv > src/transform/testdata/phones.tsv

Input: lines `region<TAB>raw` (or the table itself: its third column is recomputed)."""
import sys

import phonenumbers as pn

print(f"# region<TAB>raw<TAB>E.164 by libphonenumber (Python phonenumbers {pn.__version__}; empty: not a valid number)")
for line in sys.stdin:
    if line.startswith("#") or not line.strip():
        continue
    region, raw = line.rstrip("\n").split("\t")[:2]
    try:
        n = pn.parse(raw, region)
        want = pn.format_number(n, pn.PhoneNumberFormat.E164) if pn.is_valid_number(n) and not n.extension else ""
    except pn.NumberParseException:
        want = ""
    print(f"{region}\t{raw}\t{want}")
