"""``captioner serve``: the captioning web page and JSON API on this machine (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket

from captioner.cli.common import CliError, add_device_option, add_model_option, bounded, load_model, positive_int

logger = logging.getLogger(__name__)


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "serve", help="serve a web page and JSON API for captioning photos",
        description="Load the model once and serve, at http://HOST:PORT/, a page where photos can be chosen or "
        "dropped and captioned (with the beam's n-best list), and a JSON API: POST /api/caption (multipart field "
        "'files', form fields beam_size and max_length), GET /healthz, GET /api/model, OpenAPI docs at /docs. "
        "Listens on 127.0.0.1 (this machine only) unless --host says otherwise. Needs the serve extra: "
        "pip install 'captioner[serve]'.",
    )
    add_model_option(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1; 0.0.0.0 makes the page reachable from "
                        "other machines, with no authentication)")
    parser.add_argument("--port", type=bounded(int, 1), default=8000, help="port (default: 8000)")
    parser.add_argument("--max-upload-mb", type=bounded(float, 0.0, inclusive=False), default=10.0, metavar="MB",
                        help="largest request body accepted; larger uploads get 413 (default: 10)")
    parser.add_argument("--max-queue", type=positive_int, default=16,
                        help="requests allowed to wait for the model; more get 503 (default: 16)")
    parser.add_argument("--max-batch", type=positive_int, default=32,
                        help="photos captioned together at most, across waiting requests (default: 32)")
    add_device_option(parser)
    parser.set_defaults(run=run)


def check_port(host: str, port: int) -> None:
    """Refuse early, with one line, when the address cannot be listened on."""
    if port > 65535:
        raise CliError(f"--port {port}: ports go up to 65535")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        reason = err.strerror or err
        raise CliError(f"cannot listen on {host}:{port} ({reason}); pass another --port or --host") from None


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from captioner.serving.server import create_app
    except ImportError as err:
        raise CliError(f"captioner serve needs FastAPI and uvicorn ({err.name} is missing): "
                       "pip install 'captioner[serve]'") from None
    from captioner.models.files import resolve_model_dir

    check_port(args.host, args.port)
    if not _is_loopback(args.host):
        logger.warning("listening on %s: anyone who can reach this machine can use the page (no authentication)",
                       args.host)
    model = load_model(args.model, args.device)
    app = create_app(model, resolve_model_dir(args.model), max_upload_mb=args.max_upload_mb,
                     max_queue=args.max_queue, max_batch=args.max_batch)
    print(f"captioner: serving {resolve_model_dir(args.model)} at http://{args.host}:{args.port}/ (Ctrl+C stops)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
