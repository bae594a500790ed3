"""Recall per hazard and precision of `ema-lint check` on a labelled corpus of real code.

The corpus is `bench/accuracy/*.toml`: pinned sources (PyPI releases, GitHub commits) and
labelled places in them. Sources are downloaded once into `bench/_accuracy/` (git-ignored),
never imported, and checked one source tree at a time, the way a user runs `check .`.

    python bench/accuracy.py                 # fetch what is missing, check, print the scores
    python bench/accuracy.py --split dev     # only the sources in one split
    python bench/accuracy.py --unjudged      # also list findings no label covers, to judge them
    python bench/accuracy.py fetch           # only download and unpack

A case is a place in one file: `spans` (1-based inclusive line ranges) where a finding should
start, `hazard` H1/H2/H3 for a real hazard or NEG for a look-alike that must stay silent. A
finding of the hazard's family starting in a span is a hit; an error-severity finding
starting in a NEG span is a false positive. Sources are split into `dev` and `holdout` by a
hash of their name, so tuning on `dev` leaves whole projects unseen.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
LABELS = BENCH / "accuracy"
STORE = BENCH / "_accuracy"
# Where `fetch`-style read-only mirrors of GitHub repositories live, `owner+name/repo` each.
MIRRORS = Path(os.environ.get("EMA_LINT_MIRRORS", "/work/.mirror"))

FAMILIES = {
    "H1": ("EMA101", "EMA102", "EMA103"),
    "H2": ("EMA201", "EMA202", "EMA203", "EMA204", "EMA205"),
    "H3": ("EMA301",),
}
HAZARD_NAMES = {
    "H1": "running stats under checkpoint",
    "H2": "state keeping autograd history",
    "H3": "per-tensor model-EMA loops",
}


@dataclass(frozen=True)
class Source:
    name: str
    pypi: str = ""  # "name==version"
    github: str = ""  # "owner/repo"
    commit: str = ""
    # "sdist" or "wheel" for PyPI sources: which artifact the labels' paths refer to
    artifact: str = "wheel"
    # a folder inside the source to check instead of its whole tree
    subdir: str = ""

    @property
    def split(self) -> str:
        digest = hashlib.sha256(self.name.encode()).digest()
        return "holdout" if digest[0] % 4 == 0 else "dev"

    @property
    def root(self) -> Path:
        return STORE / "src" / self.name


@dataclass(frozen=True)
class Case:
    source: str
    path: str
    spans: tuple[tuple[int, int], ...]
    hazard: str
    why: str
    verified: str
    label_file: str

    def covers(self, path: str, line: int) -> bool:
        return path == self.path and any(start <= line <= end for start, end in self.spans)


@dataclass
class Corpus:
    sources: dict[str, Source] = field(default_factory=dict)
    cases: list[Case] = field(default_factory=list)


def load_corpus() -> Corpus:
    corpus = Corpus()
    for label_file in sorted(LABELS.glob("*.toml")):
        data = tomllib.loads(label_file.read_text())
        for entry in data.get("source", []):
            source = Source(**entry)
            if source.name in corpus.sources and corpus.sources[source.name] != source:
                raise SystemExit(f"{label_file.name}: source {source.name!r} differs from an earlier definition")
            corpus.sources[source.name] = source
        for entry in data.get("case", []):
            spans = entry.get("spans") or [[entry["line"], entry.get("end_line", entry["line"])]]
            if entry["hazard"] not in (*FAMILIES, "NEG"):
                raise SystemExit(f"{label_file.name}: unknown hazard {entry['hazard']!r}")
            corpus.cases.append(
                Case(
                    source=entry["source"],
                    path=entry["path"],
                    spans=tuple((int(a), int(b)) for a, b in spans),
                    hazard=entry["hazard"],
                    why=entry.get("why", ""),
                    verified=entry.get("verified", "reading"),
                    label_file=label_file.name,
                )
            )
    missing = {c.source for c in corpus.cases} - set(corpus.sources)
    if missing:
        raise SystemExit(f"cases name undefined sources: {sorted(missing)}")
    return corpus


def fetch(source: Source) -> Path:
    """Download and unpack `source` once; its files then lie under `source.root`."""
    if source.root.is_dir():
        return source.root
    staging = STORE / "staging" / source.name
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if source.pypi:
        _fetch_pypi(source, staging)
    else:
        _fetch_github(source, staging)
    source.root.parent.mkdir(parents=True, exist_ok=True)
    entries = list(staging.iterdir())
    # an sdist or a GitHub archive holds one top folder; the labels' paths start inside it
    top = entries[0] if len(entries) == 1 and entries[0].is_dir() and (source.github or source.artifact == "sdist") else staging
    os.replace(top, source.root)
    shutil.rmtree(STORE / "staging" / source.name, ignore_errors=True)
    return source.root


def _fetch_pypi(source: Source, staging: Path) -> None:
    downloads = STORE / "downloads" / source.name
    downloads.mkdir(parents=True, exist_ok=True)
    if not any(downloads.iterdir()):
        kind = ["--no-binary", ":all:"] if source.artifact == "sdist" else ["--only-binary", ":all:"]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *kind, "-d", str(downloads), source.pypi],
            check=True,
        )
    (archive,) = list(downloads.iterdir())
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as handle:
            handle.extractall(staging, [m for m in handle.namelist() if m.endswith(".py")])
    else:
        with tarfile.open(archive) as handle:
            handle.extractall(staging, [m for m in handle.getmembers() if m.isfile() and m.name.endswith(".py")], filter="data")


def _fetch_github(source: Source, staging: Path) -> None:
    mirror = MIRRORS / source.github.replace("/", "+") / "repo"
    if (mirror / ".git").is_dir():
        mirror = mirror / ".git"
    if mirror.is_dir():
        # file by file: a snapshot may lack large blobs, which `git archive` refuses
        listing = subprocess.run(
            ["git", f"--git-dir={mirror}", "ls-tree", "-r", "-z", source.commit],
            check=True,
            capture_output=True,
        ).stdout.decode()
        blobs = []
        for entry in filter(None, listing.split("\0")):
            meta, path = entry.split("\t", 1)
            # mode 120000 is a symbolic link, whose blob is the target's path, not code
            if meta.split()[1] == "blob" and meta.split()[0] != "120000" and path.endswith(".py"):
                blobs.append((meta.split()[2], path))
        batch = subprocess.run(
            ["git", f"--git-dir={mirror}", "cat-file", "--batch"],
            input="".join(f"{sha}\n" for sha, _ in blobs).encode(),
            check=True,
            capture_output=True,
        ).stdout
        offset = 0
        for _, path in blobs:
            header_end = batch.index(b"\n", offset)
            size = int(batch[offset:header_end].split()[2])
            target = staging / "tree" / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(batch[header_end + 1 : header_end + 1 + size])
            offset = header_end + 1 + size + 1
        return
    clone = staging / "tree"
    subprocess.run(["git", "clone", "-q", "--filter=blob:none", f"https://github.com/{source.github}", str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", source.commit], check=True)
    shutil.rmtree(clone / ".git")


@dataclass(frozen=True)
class Finding:
    source: str
    path: str
    line: int
    code: str
    severity: str
    message: str


def check(source: Source) -> list[Finding]:
    """`ema-lint check` on the source tree in a subprocess, as a user would run it: the tree is
    a repository of its own (a `.git` marker, so this repository's `.gitignore`, which ignores
    `build/`, does not apply) with its own settings or the defaults (a `.ema-lint.toml` marker
    unless it has a configuration, so this repository's `exclude` does not apply)."""
    _stand_alone(source.root)
    target = source.root / source.subdir if source.subdir else source.root
    # run from inside the tree, as a user does; `PYTHONPATH` picks which ema-lint is measured
    run = subprocess.run(
        [sys.executable, "-m", "ema_lint", "check", "--no-cache", "--output-format", "json", "."],
        capture_output=True,
        text=True,
        cwd=target,
    )
    # exit 2 with a report: a configuration problem (EMA002) or a checker failure (EMA005)
    # among the findings, which are scored like the rest and said on stderr
    if run.returncode not in (0, 1) and not (run.returncode == 2 and run.stdout.strip().startswith("[")):
        raise SystemExit(f"ema-lint check failed on {source.name} (exit {run.returncode}):\n{run.stderr}")

    findings = []
    report = json.loads(run.stdout or "[]")
    for item in report:
        if item["code"] == "EMA005":
            print(f"note: EMA005 on {source.name}: {item['filename']}: {item['message']}", file=sys.stderr)
    for item in report:
        path = os.path.relpath(os.path.join(target, item["filename"]), source.root).replace(os.sep, "/")
        findings.append(
            Finding(source.name, path, item["location"]["row"], item["code"], item.get("severity", "error"), item["message"])
        )
    return findings


def _stand_alone(root: Path) -> None:
    (root / ".git").mkdir(exist_ok=True)
    configured = any((root / name).exists() for name in (".ema-lint.toml", "ema-lint.toml"))
    pyproject = root / "pyproject.toml"
    if pyproject.exists():
        try:
            configured |= "ema-lint" in tomllib.loads(pyproject.read_text(errors="replace")).get("tool", {})
        except (tomllib.TOMLDecodeError, AttributeError):
            pass
    if not configured:
        (root / ".ema-lint.toml").write_text("# the defaults: this source is checked as a project of its own\n")


def score(corpus: Corpus, findings: dict[str, list[Finding]], show_unjudged: bool) -> int:
    cases_by_source = defaultdict(list)
    for case in corpus.cases:
        if case.source in findings:
            cases_by_source[case.source].append(case)
    hits: dict[str, list[bool]] = defaultdict(list)
    true_errors = false_errors = true_any = false_any = 0
    misses, false_positives, unjudged = [], [], []
    for source, found in findings.items():
        cases = cases_by_source[source]
        for case in cases:
            if case.hazard == "NEG":
                continue
            hit = any(f.code in FAMILIES[case.hazard] and case.covers(f.path, f.line) for f in found)
            hits[case.hazard].append(hit)
            if not hit:
                misses.append(case)
        for f in found:
            if f.code.startswith("EMA0"):
                continue
            covering = [c for c in cases if c.covers(f.path, f.line)]
            positive = [c for c in covering if c.hazard != "NEG" and f.code in FAMILIES[c.hazard]]
            negative = [c for c in covering if c.hazard == "NEG"]
            true_any += bool(positive)
            false_any += bool(negative and not positive)
            if f.severity == "error":
                if positive:
                    true_errors += 1
                elif negative:
                    false_errors += 1
                    false_positives.append(f)
            if not positive and not negative:
                unjudged.append(f)

    print(f"{'hazard':<36} {'recall':>8}  found/labelled")
    for hazard in FAMILIES:
        got = hits.get(hazard, [])
        rate = sum(got) / len(got) if got else float("nan")
        print(f"{hazard + ' ' + HAZARD_NAMES[hazard]:<36} {rate:>8.0%}  {sum(got)}/{len(got)}")
    judged = true_errors + false_errors
    precision = true_errors / judged if judged else float("nan")
    negatives = sum(1 for c in corpus.cases if c.hazard == "NEG" and c.source in findings)
    print(f"{'error findings that are real':<36} {precision:>8.0%}  {true_errors}/{judged} ({negatives} look-alike negatives)")
    judged_any = true_any + false_any
    print(f"{'findings of any severity that are real':<36} {true_any / judged_any if judged_any else float('nan'):>8.0%}  {true_any}/{judged_any}")
    print(f"unjudged findings: {len(unjudged)}")
    for case in misses:
        print(f"  miss {case.hazard} {case.source}:{case.path}:{case.spans[0][0]}  {case.why}")
    for f in false_positives:
        print(f"  false {f.code} {f.source}:{f.path}:{f.line}  {f.message}")
    if show_unjudged:
        for f in unjudged:
            print(f"  unjudged {f.code} {f.severity} {f.source}:{f.path}:{f.line}  {f.message}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=("score", "fetch"), default="score")
    parser.add_argument("--split", choices=("dev", "holdout", "all"), default="all")
    parser.add_argument("--source", action="append", default=[], help="only these sources (repeatable)")
    parser.add_argument("--unjudged", action="store_true", help="list findings that no label covers")
    args = parser.parse_args()
    corpus = load_corpus()
    chosen = [
        s
        for s in corpus.sources.values()
        if (args.split == "all" or s.split == args.split) and (not args.source or s.name in args.source)
    ]
    for source in chosen:
        fetch(source)
    if args.action == "fetch":
        return 0
    findings = {source.name: check(source) for source in chosen}
    print(f"{len(chosen)} sources, split {args.split}")
    return score(corpus, findings, args.unjudged)


if __name__ == "__main__":
    sys.exit(main())
