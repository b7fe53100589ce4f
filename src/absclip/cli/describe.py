"""CLI commands for class descriptions: ``absclip describe`` (LLM generation) and ``absclip descriptions``."""

from __future__ import annotations

import argparse
import sys

from absclip.cli.options import positive_int
from absclip.errors import AbsclipError
from absclip.io.files import json_text

EPILOG_DESCRIBE = """\
examples:
  export OPENAI_API_KEY=...            # the key is read from the environment only
  absclip describe --classes-file classes.txt --out descriptions.json --per-class 50
  absclip describe --classes cat,dog --out d.json --base-url http://127.0.0.1:8000/v1 --model llama3
      (vLLM, llama.cpp server, Ollama's /v1 endpoint: any OpenAI-compatible chat-completions server)
  absclip classify cat.jpg --classes-file classes.txt --descriptions descriptions.json

Re-running the same command resumes: classes already in --out are not asked again.
--questions: a JSON list or .txt (one per line) of questions with {c} for the class name.
"""

EPILOG_SETS = """\
names: <source>:<dataset>[/<variant>], e.g. cupl:pets, cupl:pets/base, dclip:imagenet, waffle:cub,
       abs:dtd (the ABS paper's cupl.json), abs:dtd/clip-d, abs:dtd/clip-e, susx:imagenet
use:   absclip classify img.jpg --classes-file dtd.json --descriptions abs:dtd
files are downloaded once from the pinned upstream commit into the cache and checksum-verified;
offline: export ABSCLIP_DESCRIPTIONS_DIR=/path/to/copy  (laid out as <folder>/<path>, see 'list')
"""


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``describe`` and ``descriptions {list,fetch}`` to the ``absclip`` parser (``common`` is not used)."""
    from absclip.text.chat import DEFAULT_BASE_URL, DEFAULT_MODEL, ChatSettings

    d = ChatSettings()
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("describe", formatter_class=fmt, help="generate class descriptions with an LLM",
                       description="Write CuPL-style descriptions {class: [sentences]} for your classes, asking an "
                                   "OpenAI-compatible chat-completions server several questions per class.",
                       epilog=EPILOG_DESCRIBE)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--classes", help="comma-separated class names")
    g.add_argument("--classes-file", help="class names: .txt (one per line), .json list, .csv/.tsv with a 'name' "
                                          "column")
    p.add_argument("--out", required=True, help="output JSON {class: [sentences]}; resumed if it exists")
    p.add_argument("--per-class", type=positive_int, default=50, help="sentences wanted per class (default: 50)")
    p.add_argument("--questions", help="question templates with {c} (JSON list or .txt); default: CuPL's five")
    p.add_argument("--system-prompt", help="system message ({c} allowed); 'none' for no system message")
    s = p.add_argument_group("server")
    s.add_argument("--base-url", default=DEFAULT_BASE_URL, help="OpenAI-compatible API base (default: %(default)s)")
    s.add_argument("--model", default=DEFAULT_MODEL, help="model name (default: %(default)s)")
    s.add_argument("--api-key-env", default=d.api_key_env,
                   help="environment variable holding the API key (default: %(default)s; optional for local "
                        "servers)")
    s.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature (default: "
                                                                            "%(default)s)")
    s.add_argument("--max-tokens", type=positive_int, default=d.max_tokens, help="tokens per answer (default: "
                                                                                  "%(default)s)")
    s.add_argument("--concurrency", type=positive_int, default=4, help="classes in flight at once (default: 4)")
    s.add_argument("--timeout", type=float, default=d.timeout, help="seconds per request (default: %(default)s)")
    s.add_argument("--max-retries", type=int, default=d.max_retries,
                   help="retries per request on 429/5xx/network/malformed answers (default: %(default)s)")
    s.add_argument("--backoff", type=float, default=d.backoff,
                   help="first retry delay in seconds, doubled per retry with jitter (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="ignore classes already in --out and ask again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("descriptions", formatter_class=fmt, help="public description sets (CuPL, DCLIP, ABS, ...)",
                       description="Named public description sets: list them, or fetch them into the cache.",
                       epilog=EPILOG_SETS)
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = acts.add_parser("list", help="show the known sets and whether each is available locally",
                        formatter_class=fmt, epilog=EPILOG_SETS)
    q.add_argument("source", nargs="?", help="only this source (cupl, dclip, waffle, abs, susx)")
    q.add_argument("--descriptions-dir", help="local copy (default: $ABSCLIP_DESCRIPTIONS_DIR)")
    q.add_argument("--json", action="store_true", help="print JSON rows")
    q.set_defaults(func=cmd_descriptions_list, debug=False)
    q = acts.add_parser("fetch", help="download sets into the cache (checksum-verified); print their paths",
                        formatter_class=fmt, epilog=EPILOG_SETS)
    q.add_argument("names", nargs="+", metavar="NAME", help="set names, e.g. cupl:pets abs:dtd")
    q.add_argument("--descriptions-dir", help="local copy (default: $ABSCLIP_DESCRIPTIONS_DIR)")
    q.set_defaults(func=cmd_descriptions_fetch, debug=False)


def cmd_describe(args: argparse.Namespace) -> int:
    """absclip describe: generate descriptions with an LLM; returns 0, or 1 when some classes failed."""
    from absclip.text.chat import DEFAULT_SYSTEM_PROMPT, ChatClient, ChatFatalError, ChatSettings
    from absclip.text.classes import load_classes
    from absclip.text.describe import DEFAULT_QUESTIONS, generate_descriptions, load_questions

    if args.backoff < 0 or args.timeout <= 0 or args.max_retries < 0:
        raise AbsclipError("--backoff and --max-retries must be >= 0 and --timeout > 0.")
    classes = load_classes(args.classes, args.classes_file)
    questions = load_questions(args.questions) if args.questions else list(DEFAULT_QUESTIONS)
    system = DEFAULT_SYSTEM_PROMPT if args.system_prompt is None else args.system_prompt
    if system.strip().lower() in ("", "none"):
        system = None
    settings = ChatSettings(base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
                            temperature=args.temperature, max_tokens=args.max_tokens, timeout=args.timeout,
                            max_retries=args.max_retries, backoff=args.backoff)
    client = ChatClient(settings)
    try:
        report = generate_descriptions(list(classes.names), args.out, client=client, questions=questions,
                                       per_class=args.per_class, concurrency=args.concurrency, system_prompt=system,
                                       overwrite=args.overwrite, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"absclip: interrupted; finished classes are saved in {args.out} (run the same command to resume).",
              file=sys.stderr)
        return 130
    except ChatFatalError as e:
        raise AbsclipError(f"{e} Finished classes are saved in {args.out}.") from e
    total = len(report.written) + len(report.resumed)
    print(f"{args.out}: {total} of {len(classes)} classes ({len(report.written)} new, {len(report.resumed)} "
          f"already there, {len(report.failed)} failed; {report.requests} requests)")
    for name, n in report.short.items():
        print(f"absclip: warning: only {n} of {args.per_class} distinct sentences for {name!r}", file=sys.stderr)
    if report.failed:
        shown = "; ".join(f"{k!r}: {v}" for k, v in list(report.failed.items())[:5])
        more = f" and {len(report.failed) - 5} more" if len(report.failed) > 5 else ""
        print(f"absclip: error: {len(report.failed)} classes failed ({shown}{more}); run the same command again to "
              "retry them.", file=sys.stderr)
        return 1
    return 0


def cmd_descriptions_list(args: argparse.Namespace) -> int:
    """absclip descriptions list: the known sets, their source and whether they are local, cached or missing."""
    from absclip.text.public_sets import SOURCES, default_cache_dir, list_sets, local_dir, status

    if args.source and args.source not in SOURCES:
        raise AbsclipError(f"Unknown source {args.source!r}; known: {', '.join(SOURCES)}.")
    base = local_dir(args.descriptions_dir)
    rows = []
    for s in list_sets(args.source):
        state, path = status(s, args.descriptions_dir)
        rows.append({"name": s.name, "kind": s.kind, "status": state, "path": str(path) if path else None,
                     "file": s.local_path, "repo": s.source.repo, "commit": s.source.commit, "url": s.url,
                     "sha256": s.sha256})
    if args.json:
        print(json_text(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['name']:<26} {r['kind']:<13} {r['status']:<15} {r['repo']}@{r['commit'][:7]}")
    print(f"\nlocal copy: {base or '(none; set ABSCLIP_DESCRIPTIONS_DIR)'}\ncache:      {default_cache_dir()}")
    return 0


def cmd_descriptions_fetch(args: argparse.Namespace) -> int:
    """absclip descriptions fetch: resolve (download if needed) each named set and print its path."""
    from absclip.text.public_sets import resolve

    for name in args.names:
        print(f"{name}\t{resolve(name, descriptions_dir=args.descriptions_dir)}")
    return 0
