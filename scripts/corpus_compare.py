#!/usr/bin/env python3
"""Compares the corpus runs scripts/corpus.sh made, task by task.

Usage: corpus_compare.py OUT ENTRY...   (OUT/ENTRY/{ansible,native}.{out,rc,ms}; with
CORPUS_TAG=fallback, fallback.* in place of native.*)

A run is read as a list of task records: each `TASK [..]` / `RUNNING HANDLER [..]`
banner with the result words printed under it (`ok`, `changed`, `skipping`, `fatal`,
`failed`, with the loop item when there is one, and `...ignoring`), each `included:`
line, and each `PLAY [..]` banner. The records of the two runs are aligned (longest
matching blocks, as difflib does); a task of ansible-core's run matches when the native
run has the same record at the aligned place. An entry matches when every record, the
PLAY RECAP line and the exit code are the same.

Prints a Markdown table, the mismatches with the first differing records, the task match
figure and the wall times.
"""

import difflib
import os
import re
import sys

RESULT = re.compile(r"^(ok|changed|skipping|fatal|failed): \[([^\]]+)\](.*)$")


def records(text):
    out = []
    current = None
    for line in text.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [", "PLAY [")):
            name = line.rstrip("* ").rstrip()
            current = [name, []]
            out.append(current)
            continue
        if line.startswith("included: "):
            out.append([line.split(" for ")[0], []])
            continue
        if line.startswith("...ignoring") and current is not None:
            current[1].append("ignoring")
            continue
        m = RESULT.match(line)
        if m and current is not None:
            status, _host, rest = m.groups()
            item = re.search(r"\(item=(.*?)\)( =>|$)", rest)
            word = status if not item else f"{status}({item.group(1)[:60]})"
            current[1].append(word)
    return [(name, tuple(words)) for name, words in out]


def recap(text):
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("PLAY RECAP"):
            for l in lines[i + 1:]:
                if l.strip():
                    return " ".join(l.split())
    return None


def errors(text, limit=2):
    """The first fatal lines and [ERROR] messages, shortened, for the mismatch list."""
    found = []
    for line in text.splitlines():
        if line.startswith(("fatal:", "failed:", "[ERROR]", "ERROR!", "error:")):
            found.append(line[:300])
        if len(found) >= limit:
            break
    return found


def read(path, default=""):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return default


def main():
    out_dir = sys.argv[1]
    # `native` (the runtime alone) or `fallback` (with --ansible-fallback).
    tag = os.environ.get("CORPUS_TAG", "native")
    entries = sys.argv[2:]
    total_tasks = matched_tasks = 0
    entries_matched = 0
    ansible_ms = native_ms = 0
    rows = []
    details = []
    for entry in entries:
        d = os.path.join(out_dir, entry)
        a_text, n_text = read(f"{d}/ansible.out"), read(f"{d}/{tag}.out")
        a_rc, n_rc = read(f"{d}/ansible.rc").strip(), read(f"{d}/{tag}.rc").strip()
        a_ms, n_ms = int(read(f"{d}/ansible.ms", "0") or 0), int(read(f"{d}/{tag}.ms", "0") or 0)
        ansible_ms += a_ms
        native_ms += n_ms
        a_rec, n_rec = records(a_text), records(n_text)
        tasks = [r for r in a_rec if not r[0].startswith("PLAY [")]
        matcher = difflib.SequenceMatcher(a=a_rec, b=n_rec, autojunk=False)
        same = set()
        for block in matcher.get_matching_blocks():
            for k in range(block.size):
                same.add(block.a + k)
        ok_tasks = sum(1 for i, r in enumerate(a_rec) if i in same and not r[0].startswith("PLAY ["))
        # A run that stops before any task (a parse error) counts as one task.
        count = max(len(tasks), 1)
        if not tasks:
            ok_tasks = 1 if (a_rec == n_rec and a_rc == n_rc) else 0
        total_tasks += count
        matched_tasks += ok_tasks
        a_recap, n_recap = recap(a_text), recap(n_text)
        whole = a_rec == n_rec and a_recap == n_recap and a_rc == n_rc
        entries_matched += whole
        rows.append(
            f"| {entry} | {'yes' if whole else 'no'} | {ok_tasks}/{count} | {a_rc}/{n_rc} "
            f"| {a_ms} | {n_ms} | {a_ms / max(n_ms, 1):.0f}x |"
        )
        if not whole:
            lines = [f"### {entry}"]
            if a_rc != n_rc:
                lines.append(f"exit codes: ansible {a_rc}, native {n_rc}")
            if a_recap != n_recap:
                lines.append(f"recap: ansible `{a_recap}`; native `{n_recap}`")
            for op, i1, i2, j1, j2 in matcher.get_opcodes():
                if op == "equal":
                    continue
                for r in a_rec[i1:i2][:3]:
                    lines.append(f"  ansible: {r[0]} {' '.join(r[1])}")
                for r in n_rec[j1:j2][:3]:
                    lines.append(f"  native:  {r[0]} {' '.join(r[1])}")
                break
            for e in errors(a_text):
                lines.append(f"  ansible error: {e}")
            for e in errors(n_text):
                lines.append(f"  native error:  {e}")
            details.append("\n".join(lines))
    print("| entry | whole run matches | tasks matching | exit ansible/native | ansible ms | native ms | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print()
    print("\n\n".join(details))
    print()
    pct = 100.0 * matched_tasks / max(total_tasks, 1)
    print(f"tasks matching: {matched_tasks}/{total_tasks} = {pct:.1f} %")
    print(f"whole runs matching: {entries_matched}/{len(entries)}")
    print(
        f"wall time: ansible-playbook {ansible_ms / 1000:.1f} s, dynserv-agent {native_ms / 1000:.2f} s, "
        f"ratio {ansible_ms / max(native_ms, 1):.0f}x"
    )


if __name__ == "__main__":
    main()
