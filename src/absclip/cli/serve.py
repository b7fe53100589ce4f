"""``absclip serve``: the HTTP API and the web page (FastAPI + uvicorn; Ray Serve with ``--engine ray``)."""

from __future__ import annotations

import argparse
import os
import sys

from absclip.errors import AbsclipError


def api_key_from_env(var: str | None) -> str | None:
    """Return the API key held in environment variable ``var`` (None: no key asked for); never printed."""
    if not var:
        return None
    key = os.environ.get(var, "")
    if not key.strip():
        raise AbsclipError(f"--api-key-env names {var}, but that environment variable is not set or empty.")
    return key.strip()


def cmd_serve(args: argparse.Namespace) -> int:
    """absclip serve: load the model once and answer /v1/classify, /v1/explain and the page until interrupted."""
    from absclip.cli.options import build_classifier, classifier_spec, read_class_inputs, set_classes
    from absclip.methods.base import get_method_class
    from absclip.serve.app import require_web

    require_web()
    get_method_class(args.method)
    if args.max_upload_mb <= 0:
        raise AbsclipError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}.")
    if args.replicas < 1:
        raise AbsclipError(f"--replicas must be at least 1, got {args.replicas}.")
    key = api_key_from_env(args.api_key_env)
    inputs = read_class_inputs(args)  # every user file is read before the model loads
    options = {"api_key": key, "max_upload_bytes": int(args.max_upload_mb * 2**20), "max_pixels": args.max_pixels,
               "root_path": args.root_path}
    if args.engine == "ray":
        from absclip.serve.ray_serve import serve_on_ray

        serve_on_ray(classifier_spec(args), inputs, method=args.method, replicas=args.replicas,
                     address=args.address, host=args.host, port=args.port, max_wait_s=args.batch_wait_ms / 1000,
                     class_sets=args.class_sets, cpus_per_replica=args.cpus_per_replica,
                     gpus_per_replica=args.gpus_per_replica, **options)
        return 0
    import uvicorn

    from absclip.serve.app import LocalBackend, create_app
    from absclip.serve.service import Service

    clf = build_classifier(args, ["abs"])  # the page offers every method, ABS's attention model included
    clf.encoder.progress = False
    set_classes(clf, args, inputs)
    clf.method(args.method)  # the default class set's texts encoded once, before the first request
    clf.attention  # noqa: B018 - loaded now (class sets given per request share it), not on the first request
    service = Service(clf, inputs[1], class_sets=args.class_sets)
    app = create_app(LocalBackend(service, method=args.method, max_wait_s=args.batch_wait_ms / 1000), **options)
    print(f"absclip: serving {service.model} ({len(clf.classes)} classes, method {args.method}) on "
          f"http://{args.host}:{args.port}{args.root_path}/" + (" (API key required)" if key else ""),
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="debug" if args.debug else "warning",
                access_log=args.access_log, server_header=False)
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``absclip serve`` to the ``absclip`` parser (model, attention and method options from ``common``)."""
    from absclip.cli.engine import ENGINES
    from absclip.cli.options import EPILOG_MODELS, class_options, method_help, positive_int

    p = sub.add_parser(
        "serve", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="HTTP API and web page for classification with explanations",
        description="Load the model once and serve: GET / (a web page: drop an image, edit the classes, see ranked "
                    "labels and the explanation picture), POST /v1/classify (multipart form: image, classes, method, "
                    "top; answers [{label, score}] best first), POST /v1/explain (the explanation PNG), GET /healthz, "
                    "GET /openapi.json. Concurrent requests are batched; answers equal 'absclip classify'. "
                    "Needs: pip install 'absclip[serve]'.",
        epilog="example:\n  absclip serve --classes-file imagenet.json --descriptions cupl:imagenet --port 8000\n"
               "  curl -F image=@cat.jpg -F classes=cat,dog http://127.0.0.1:8000/v1/classify\n\n" + EPILOG_MODELS,
    )
    class_options(p)
    p.add_argument("--method", default="abs", help=f"default method of requests: {method_help('abs')}")
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    g.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    g.add_argument("--root-path", default="", help="path prefix a reverse proxy serves absclip under, e.g. /absclip "
                                                   "(default: none)")
    g.add_argument("--api-key-env", metavar="VAR", help="require the API key held in environment variable VAR on "
                                                        "/v1/* (X-API-Key or Authorization: Bearer)")
    g.add_argument("--max-upload-mb", type=float, default=20, help="larger uploads get 413 (default: %(default)s)")
    g.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to share its batch; batches hold up to --batch-size "
                        "images (default: %(default)s)")
    g.add_argument("--class-sets", type=positive_int, default=16,
                   help="class lists given per request whose encoded texts are kept (default: %(default)s)")
    g.add_argument("--access-log", action="store_true", help="log each request (method, path, status)")
    r = p.add_argument_group("engine", "--engine ray needs: pip install 'absclip[serve-ray]'")
    r.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: one process (default); ray: a Ray Serve deployment of --replicas model replicas")
    r.add_argument("--replicas", type=int, default=1, help="model replicas on Ray Serve (default: %(default)s)")
    r.add_argument("--address", help="Ray cluster: auto or ray://HOST:PORT (default: $RAY_ADDRESS, else a new local "
                                     "Ray instance)")
    r.add_argument("--cpus-per-replica", type=float, default=1.0, help="logical CPUs per replica (default: 1)")
    r.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per replica (default: 0)")
    p.set_defaults(func=cmd_serve)
