"""``camkit serve``: a local web page and JSON API that explain uploaded images (the serve extra)."""
from __future__ import annotations

import argparse
from typing import Any

from .common import add_device_options, csv_list


def add_parser(sub: Any) -> None:
    """Register ``camkit serve`` on the subcommands ``sub``."""
    sv = sub.add_parser("serve", help="a local web page and JSON API that explain uploaded images",
                        description="Serve the models: a page at / (upload an image, pick methods, see the maps), "
                        "a JSON API (GET /models, GET /methods, POST /explain) and its docs at /docs. Needs the "
                        "serve extra: pip install 'camkit[serve]'.")
    sv.add_argument("--models", default="efficientnet_lite0,digits_resnet", help="comma-separated zoo names, each "
                    "optionally NAME=WEIGHTS (default: efficientnet_lite0,digits_resnet)")
    sv.add_argument("--methods", default="all", help="the methods served: 'all' (default) or comma-separated names; "
                    "others are refused (422) and not listed")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only; "
                    "any other address prints a warning: no login, no TLS)")
    sv.add_argument("--allowed-hosts", default=None, help="comma-separated Host names the server answers to, '*' any "
                    "(default: 127.0.0.1,localhost,::1 on a loopback address, any otherwise); other names get 403 "
                    "(DNS rebinding)")
    sv.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free port)")
    sv.add_argument("--max-batch", type=int, default=16, help="images per batched forward (default: 16; 1: no "
                    "dynamic batching)")
    sv.add_argument("--batch-window-ms", type=float, default=5.0, help="how long the first request of a batch "
                    "waits for others (default: 5)")
    sv.add_argument("--max-queue", type=int, default=64, help="pending jobs (one per method of a request) before "
                    "answering 503 (default: 64)")
    sv.add_argument("--workers", type=int, default=1, help="threads running batches (default: 1)")
    sv.add_argument("--max-expensive-queue", type=int, default=8, help="pending jobs of expensive methods (Score-CAM: "
                    "one forward per channel), which wait in a queue of their own, before 503 (default: 8)")
    sv.add_argument("--expensive-workers", type=int, default=1, help="threads running expensive methods' batches "
                    "(default: 1)")
    sv.add_argument("--timeout", type=float, default=120.0, help="seconds per request, from reading its body to building "
                    "its answer, before 504 (default: 120)")
    sv.add_argument("--read-timeout", type=float, default=30.0, help="seconds a request's body may stall before 408 "
                    "(default: 30)")
    sv.add_argument("--max-image-mb", type=float, default=20.0, help="largest upload in MB (default: 20)")
    sv.add_argument("--max-megapixels", type=float, default=16.0, help="largest image in megapixels (default: 16); "
                    "images are decoded to at most 1024 pixels per side")
    sv.add_argument("--max-response-mb", type=float, default=64.0, help="largest answer in MB before 413 (default: "
                    "64); format=float16 answers are the smallest")
    add_device_options(sv)
    sv.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """``camkit serve``: serve until interrupted; a one-line hint when the serve extra is missing."""
    try:
        from camkit.serve import run
        import fastapi, fastapi_offline, uvicorn  # noqa: F401,E401
    except ImportError as exc:
        raise SystemExit(f"camkit serve needs the serve extra: pip install 'camkit[serve]' ({exc})") from None
    run(csv_list(args.models), host=args.host, port=args.port, device=args.device, max_batch=args.max_batch,
        window_ms=args.batch_window_ms, max_queue=args.max_queue, workers=args.workers, timeout=args.timeout,
        max_image_mb=args.max_image_mb, max_megapixels=args.max_megapixels,
        methods=None if args.methods.strip().lower() == "all" else csv_list(args.methods),
        max_expensive_queue=args.max_expensive_queue, expensive_workers=args.expensive_workers,
        read_timeout=args.read_timeout, max_response_mb=args.max_response_mb,
        allowed_hosts=None if args.allowed_hosts is None else csv_list(args.allowed_hosts))
    return 0
