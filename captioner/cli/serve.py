"""``captioner serve``: the captioning web page and JSON API on this machine (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import socket
from urllib.parse import urlsplit

from captioner.cli.common import (
    CliError,
    add_backend_option,
    add_device_option,
    add_image_options,
    add_model_option,
    apply_image_options,
    bounded,
    load_captioner,
    positive_int,
    probability,
)
from captioner.cli.options import add_field, fields_of
from captioner.serving.settings import ServeSettings, address_for, hosts_for, url_for

logger = logging.getLogger(__name__)
FD_RESERVE = 64  # file descriptors kept for the model's files, threads and the listening socket
ACCEPT_BURSTS = 3  # accept bursts of asyncio's event loop before the first burst's connections are made


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "serve", help="serve a web page and JSON API for captioning photos",
        description="Load the model once and serve, at http://HOST:PORT/, a page where photos can be chosen or "
        "dropped and captioned (with the beam's n-best list), and a JSON API: POST /api/caption (multipart field "
        "'files', form fields beam_size and max_length), GET /healthz, GET /api/model, OpenAPI docs at /docs and "
        "/redoc. Listens on 127.0.0.1 (this machine only) unless --host says otherwise, and answers only requests "
        "addressed to the names of that address (--allowed-host adds names). Needs the serve extra: "
        "pip install 'captioner[serve]'.",
    )
    add_model_option(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1; 0.0.0.0 or :: makes the page reachable from "
                        "other machines, with no authentication)")
    parser.add_argument("--port", type=bounded(int, 1), default=8000, help="port (default: 8000)")
    _add_limit_options(parser)
    _add_exposure_options(parser)
    add_image_options(parser, bad_image_choice=False)
    add_device_option(parser)
    add_backend_option(parser)
    parser.set_defaults(run=run)


def _add_limit_options(parser: argparse.ArgumentParser) -> None:
    defaults, above_zero = ServeSettings(), bounded(float, 0.0, inclusive=False)
    add_field(parser, defaults, "max_upload_mb", type=above_zero, metavar="MB",
              help="largest request body accepted; larger uploads get 413")
    add_field(parser, defaults, "max_queue", type=positive_int, help="requests allowed to wait for the model; more "
              "get 503")
    add_field(parser, defaults, "max_batch", type=positive_int,
              help="photos captioned together at most, across waiting requests")
    add_field(parser, defaults, "max_request_megapixels", type=above_zero, metavar="MP",
              help="decoded pixels allowed per request, by the sizes the files declare; files beyond it are "
              "refused by name without being decoded")
    add_field(parser, defaults, "header_timeout", type=above_zero, metavar="S",
              help="seconds a connection may take to send a request's headers; then it is closed")
    add_field(parser, defaults, "body_timeout", type=above_zero, metavar="S",
              help="seconds a request body may stall (it must also average 10 KB/s after them); then 408")
    add_field(parser, defaults, "keep_alive_timeout", type=above_zero, metavar="S",
              help="seconds an idle keep-alive connection stays open")
    add_field(parser, defaults, "max_connections", type=positive_int, metavar="N",
              help="open connections at most; one more closes the longest-idle one, or gets 503 when all are busy")
    add_field(parser, defaults, "shutdown_timeout", type=above_zero, metavar="S",
              help="seconds a graceful shutdown (SIGTERM, Ctrl+C) waits for requests in flight")
    add_field(parser, defaults, "min_confidence", type=probability, metavar="P",
              help="captions whose confidence is below P are marked needs_review (on the page and in the API)")


def _add_exposure_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="also answer requests whose Host header names NAME (repeatable; '*' answers any: only "
                        "behind a proxy that checks it). By default: 127.0.0.1, localhost, ::1 and the --host "
                        "address (on 0.0.0.0 or ::, this machine's names and addresses); other names get 400, which "
                        "stops DNS-rebinding pages")
    parser.add_argument("--cors-origin", action="append", default=[], type=_origin, metavar="ORIGIN",
                        help="allow pages from ORIGIN (e.g. http://localhost:3000) to call the API (CORS; "
                        "repeatable). By default there is no CORS and cross-origin POSTs get 403")



def _origin(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
        raise argparse.ArgumentTypeError(f"expected an origin such as http://localhost:3000, got {text!r}")
    return f"{parts.scheme}://{parts.netloc}".lower()


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
        raise CliError(f"cannot listen on {address_for(host, port)} ({reason}); pass another --port or --host") from None


def settings_from(args: argparse.Namespace) -> ServeSettings:
    """The server's settings from the parsed options: the limits, and the Host names of the bind address."""
    settings = ServeSettings(**fields_of(ServeSettings, args), allowed_hosts=hosts_for(args.host, args.allowed_host),
                             cors_origins=tuple(args.cors_origin))
    return fit_open_files(settings, fd_room())


def fit_open_files(settings: ServeSettings, room: int) -> ServeSettings:
    """Settings whose connections and accept bursts fit in ``room`` file descriptors. The event loop accepts up to
    ``backlog`` connections at a time, and may accept ``ACCEPT_BURSTS`` times before the first of them is counted
    against ``max_connections``; an accept that finds no free descriptor stops the server accepting for a second
    ('Too many open files')."""
    if settings.max_connections + ACCEPT_BURSTS * settings.backlog <= room:
        return settings
    connections = min(settings.max_connections, max(room // 2, 1))
    if connections < settings.max_connections:
        logger.warning("--max-connections %d does not fit the open-file limit; using %d (raise it with ulimit -n)",
                       settings.max_connections, connections)
    return dataclasses.replace(settings, max_connections=connections,
                               backlog=max((room - connections) // ACCEPT_BURSTS, 1))


def fd_room() -> int:
    """File descriptors the process's open-file limit leaves for connections (the soft limit is raised to the hard
    one where that helps)."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return 2**31
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return 2**31 if soft == resource.RLIM_INFINITY else max(soft - FD_RESERVE, 2)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from captioner.serving.connections import server_config
        from captioner.serving.server import create_app
    except ImportError as err:
        raise CliError(f"captioner serve needs FastAPI, uvicorn and fastapi-offline ({err.name} is missing): "
                       "pip install 'captioner[serve]'") from None
    from captioner.models.files import resolve_model_dir

    check_port(args.host, args.port)
    apply_image_options(args)
    settings = settings_from(args)
    if not _is_loopback(args.host):
        logger.warning("listening on %s: anyone who can reach this machine can use the page (no authentication); "
                       "answering Host names %s", args.host, ", ".join(settings.allowed_hosts))
    model = load_captioner(args)
    app = create_app(model, resolve_model_dir(args.model), settings)
    print(f"captioner: serving {resolve_model_dir(args.model)} at {url_for(args.host, args.port)} (Ctrl+C stops)",
          flush=True)
    uvicorn.Server(server_config(app, args.host, args.port, settings)).run()
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
