#!/usr/bin/env python3
"""One summary of a scripts/test.sh run: the failed, skipped and known-gap
tests by name, a table of the suites, then the line "N passed, N failed,
N skipped". Exits 1 when anything failed.

Input: a TSV file of suite, exit status, seconds, log path. In each log it reads
  libtest   "test result: ... N passed; N failed; N ignored" and "test X ... FAILED"
            (ignored tests are entry points of child processes and stress
            scripts, not tests of this run, and are not counted)
  CTest     "N% tests passed, N tests failed out of N", "N - X (Skipped)", "N - X (Failed)"
  pytest    "==== N passed, N failed, N skipped in Ts ====", "FAILED X", "SKIPPED [N] X: WHY" (-rs)
  scripts   "KVX-CHECK ok NAME", "KVX-CHECK FAILED NAME", "KVX-CHECK SKIPPED NAME: WHY"
  markers   "KVX-SKIP TEST: WHY" and "KVX-KNOWN-GAP TEST: WHY" printed by tests
            that libtest reports as passed: counted as skipped, not passed
A suite that exits non-zero without a counted failure counts one failure.
"""
import re
import sys

LIBTEST = re.compile(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored")
LIBTEST_FAILED = re.compile(r"^test (\S+) \.\.\. FAILED")
CTEST = re.compile(r"\d+% tests passed, (\d+) tests? failed out of (\d+)")
CTEST_LISTED = re.compile(r"^\s*\d+ - (\S+) \((.*)\)\s*$")
CHECK = re.compile(r"KVX-CHECK (ok|FAILED|SKIPPED) (.*)")
PYTEST = re.compile(r"^(?:=+ )?(.*\d+ (?:passed|failed|skipped|errors?).*) in [\d.]+s")
PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?)")
PYTEST_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)")
PYTEST_SKIPPED = re.compile(r"^SKIPPED \[\d+\] (\S+?): (.*)")
MARKER = re.compile(r"KVX-(SKIP|KNOWN-GAP) (\S+?): (.*)")


def read_suite(path):
    passed = failed = skipped = gaps = 0
    failures, skips, known = [], [], []
    with open(path, errors="replace") as log:
        lines = log.read().splitlines()
    for line in lines:
        if m := LIBTEST.search(line):
            passed += int(m[1])
            failed += int(m[2])
        elif m := LIBTEST_FAILED.match(line):
            failures.append(m[1])
        elif m := CTEST.search(line):
            failed += int(m[1])
            passed += int(m[2]) - int(m[1])
        elif m := CTEST_LISTED.match(line):
            if m[2] == "Skipped":
                passed -= 1
                skipped += 1
                skips.append((m[1], "GTEST_SKIP (see the test's output in the log)"))
            else:
                failures.append(f"{m[1]} ({m[2]})")
        elif m := PYTEST.match(line):
            for n, kind in PYTEST_COUNT.findall(m[1]):
                if kind == "passed":
                    passed += int(n)
                elif kind == "skipped":
                    skipped += int(n)
                else:
                    failed += int(n)
        elif m := PYTEST_FAILED.match(line):
            failures.append(m[1])
        elif m := PYTEST_SKIPPED.match(line):
            skips.append((m[1], m[2]))
        elif m := CHECK.search(line):
            if m[1] == "ok":
                passed += 1
            elif m[1] == "SKIPPED":
                skipped += 1
                skips.append(tuple(m[2].split(": ", 1) + [""])[:2])
            else:
                failed += 1
                failures.append(m[2])
        if m := MARKER.search(line):
            passed -= 1
            if m[1] == "SKIP":
                skipped += 1
                skips.append((m[2], m[3]))
            else:
                gaps += 1
                known.append((m[2], m[3]))
    return passed, failed, skipped, gaps, failures, skips, known


def main():
    rows = []
    failures, skips, known = [], [], []
    with open(sys.argv[1]) as results:
        for line in results:
            name, rc, seconds, path = line.rstrip("\n").split("\t")
            try:
                p, f, s, g, fl, sk, kn = read_suite(path)
            except OSError:
                p, f, s, g, fl, sk, kn = 0, 0, 0, 0, [], [], []
            if int(rc) != 0 and f == 0:
                f = 1
                fl = [f"{name} exited with status {rc} (see {path})"]
            elif int(rc) == 0 and p + f + s + g == 0:
                p = 1  # a suite that reports no counts is one check
            rows.append((name, p, f, s, g, int(seconds)))
            failures += [f"{name}: {t}" for t in fl]
            skips += [f"{name}: {t}: {why}" for t, why in sk]
            known += [f"{name}: {t}: {why}" for t, why in kn]

    print("\n==== summary")
    for title, items in (("failed", failures), ("skipped", skips), ("known upstream gaps", known)):
        if items:
            print(f"{title}:")
            for item in items:
                print(f"  {item}")
    header = ("suite", "passed", "failed", "skipped", "known gaps", "seconds")
    print()
    print(f"{header[0]:<16}" + "".join(f"{h:>12}" for h in header[1:]))
    for name, *numbers in rows:
        print(f"{name:<16}" + "".join(f"{n:>12}" for n in numbers))
    total = [sum(r[i] for r in rows) for i in range(1, 6)]
    print(f"{'total':<16}" + "".join(f"{n:>12}" for n in total))
    passed, failed, skipped, gaps, _ = total
    print(f"(skipped includes {gaps} known upstream gaps)" if gaps else "")
    print(f"{passed} passed, {failed} failed, {skipped + gaps} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
