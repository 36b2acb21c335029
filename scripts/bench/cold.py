"""Cold-start figures: the first-ever ``captioner caption ONE.jpg`` (a fresh cache: the default model is exported
first), then the same command as a fresh process (median of several), the time of each phase of a cold caption and
the packages whose import costs the most."""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

from bench.captioning import backend_args
from bench.common import captioner_cmd, child_env, r, run_measured

PHASES = """
import argparse, json, sys, time
t = [time.perf_counter()]
from captioner.cli.main import build_parser
build_parser(); t.append(time.perf_counter())
image, model_name, backend = sys.argv[1:4]
args = argparse.Namespace(backend=backend, model=model_name, device="cpu")
if backend == "torch":
    from captioner.cli.common import load_captioner
    model = load_captioner(args); t.append(time.perf_counter()); t += [t[-1], t[-1]]  # one load
else:
    from captioner.export.sessions import open_export
    opening = open_export(model_name)  # the graphs load on a thread meanwhile
    from captioner.export.runtime import load_onnx
    t.append(time.perf_counter())
    opening.result(); t.append(time.perf_counter())
    model = load_onnx(model_name, opening=opening); t.append(time.perf_counter())
from captioner.cli.common import generation_config
from captioner.generation.config import with_model_defaults
from captioner.images import load_image
picture = load_image(image, min_side=model.config.preprocess.resize); t.append(time.perf_counter())
pixels = model.preprocess([picture]); t.append(time.perf_counter())  # (1, 3, H, W)
features = model.encode(pixels); t.append(time.perf_counter())
config = with_model_defaults(generation_config(argparse.Namespace(beam_size=3)), model.decoder)
hyps = model.caption_features(features, config); t.append(time.perf_counter())
names = ["import_cli_and_parser_s", "import_runtime_s", "wait_for_sessions_s", "build_captioner_s",
         "load_image_s", "preprocess_s", "encode_s", "search_tags_confidence_s"]
out = {n: b - a for n, a, b in zip(names, t, t[1:])}
out["guided"] = bool(config.guided)
out["torch_imported"] = "torch" in sys.modules
if backend != "torch":
    from captioner.export.sessions import open_export
    s0 = time.perf_counter(); open_export(model_name).result()
    out["sessions_serial_s"] = time.perf_counter() - s0  # what loading them on a thread hides
print(json.dumps(out))
"""


def median_run(cmd: list[str], env: dict, repeats: int) -> tuple[float | None, dict]:
    """Median wall time of ``repeats`` runs of ``cmd`` (None when one fails) and the last run's record."""
    walls, last = [], {}
    for _ in range(repeats):
        last = run_measured(cmd, env)
        if last["rc"] != 0:
            return None, last
        walls.append(last["wall_s"])
    return statistics.median(walls), last


def measure_first_run(args: argparse.Namespace, image: Path, errors: dict) -> dict:
    """``captioner caption ONE.jpg`` with an empty captioner cache (``args.captioner_cache``, fresh): the one-time
    export of the default model included, as a new user's first command."""
    result = run_measured(captioner_cmd() + ["caption", str(image)] + backend_args(args),
                          child_env(args.threads, args.captioner_cache))
    if result["rc"] != 0:
        errors["first_run"] = f"exit {result['rc']}: {result['stderr_tail']}"
        return {}
    return {"first_run_s": r(result["wall_s"], 2), "first_run_peak_rss_mb": r(result["peak_rss_mb"], 1)}


def measure_cold_start(args: argparse.Namespace, image: Path, errors: dict) -> dict:
    """``captioner caption ONE.jpg`` as a fresh process (median of ``args.cold_repeats``, the export already in the
    cache), the bare interpreter start, the import of ``captioner.cli`` alone, and the phases of a cold caption."""
    env = child_env(args.threads, args.captioner_cache)
    cold, last = median_run(captioner_cmd() + ["caption", str(image)] + backend_args(args), env, args.cold_repeats)
    if cold is None:
        errors["cli_cold"] = f"exit {last['rc']}: {last['stderr_tail']}"
    startup, _ = median_run([sys.executable, "-c", "pass"], env, 3)
    code = "import time; t = time.perf_counter(); import captioner.cli; print(time.perf_counter() - t)"
    imports = [float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    check=True).stdout) for _ in range(3)]
    out = {"cli_cold_s": r(cold, 3), "import_s": r(statistics.median(imports), 4),
           "python_startup_s": r(startup, 3), "cli_cold_repeats": args.cold_repeats}
    backend = "auto" if args.backend == "auto" else args.backend
    phases = subprocess.run([sys.executable, "-c", PHASES, str(image), args.model, backend], env=env,
                            capture_output=True, text=True, check=False)
    if phases.returncode == 0:
        out["cold_phases_s"] = {k: (r(v, 3) if isinstance(v, float) else v)
                                for k, v in json.loads(phases.stdout.splitlines()[-1]).items()}
    else:
        errors["cold_phases"] = phases.stderr[-500:]
    return out


def parse_importtime(text: str) -> list[tuple[int, str, int, int]]:
    """``-X importtime`` lines → ``(depth, module, self_us, cumulative_us)`` in the order printed (children
    before their parent)."""
    rows = []
    for line in text.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            rows.append(((len(match[3]) - 1) // 2, match[4], int(match[1]), int(match[2])))
    return rows


def import_costs(rows: list[tuple[int, str, int, int]], top: int = 8) -> dict:
    """The costliest imports: the first-level imports of the command (what a captioner module pulled in when it
    was first imported), each with its three costliest children; and each heavy third-party package with the
    captioner module that imported it first."""
    parents: dict[int, int] = {}
    stack: list[int] = []  # indices waiting for their parent (children are printed first)
    for i, (depth, *_rest) in enumerate(rows):
        while stack and rows[stack[-1]][0] > depth:
            parents[stack.pop()] = i
        stack.append(i)
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    skip = {"site", "encodings", "_frozen_importlib_external", "zipimport"}
    firsts = sorted((i for i, row in enumerate(rows) if row[0] == 0 and row[1] not in skip),
                    key=lambda i: -rows[i][3])[:top]
    first_level = [{"module": rows[i][1], "cumulative_s": r(rows[i][3] / 1e6, 3), "pulls_in": [
        f"{rows[c][1]} {rows[c][3] / 1e6:.3f}s" for c in sorted(children.get(i, []), key=lambda c: -rows[c][3])[:3]]}
        for i in firsts]
    return {"first_level": first_level, "heavy_packages": heavy_packages(rows, parents)}


def heavy_packages(rows: list, parents: dict[int, int], min_s: float = 0.02) -> list[dict]:
    """Top-level third-party packages costing over ``min_s``, with the captioner module that imported each and the
    chain of imports from it (the standard library left out)."""
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    out = []
    for i, (_depth, name, _self, cumulative) in enumerate(rows):
        if "." in name or name.startswith(("captioner", "_")) or name in stdlib or cumulative / 1e6 < min_s:
            continue
        chain, j = [name], parents.get(i)
        while j is not None and not chain[-1].startswith("captioner"):
            chain.append(rows[j][1])
            j = parents.get(j)
        via = chain[-1] if chain[-1].startswith("captioner") else "(a call at run time, not an import)"
        links = chain[::-1]
        links = links if len(links) <= 5 else links[:2] + ["..."] + links[-2:]
        out.append({"package": name, "cumulative_s": r(cumulative / 1e6, 3), "imported_by": via,
                    "chain": " > ".join(links)})
    return sorted(out, key=lambda row: -row["cumulative_s"])[:10]


def measure_imports(args: argparse.Namespace, image: Path, errors: dict) -> dict:
    """``python -X importtime`` of ``captioner caption ONE.jpg`` run in-process (``captioner.cli.main``)."""
    code = (f"import sys; from captioner.cli import main; "
            f"sys.exit(main({['caption', str(image)] + backend_args(args)!r}))")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                          env=child_env(args.threads, args.captioner_cache), check=False)
    if proc.returncode != 0:
        errors["importtime"] = proc.stderr[-500:]
    rows = parse_importtime(proc.stderr)
    total = sum(row[2] for row in rows) / 1e6
    return {"import_total_s_caption_command": r(total, 3), **import_costs(rows)}
