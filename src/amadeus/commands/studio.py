"""`amadeus studio`: serve the browser studio (amadeus.studio) on the loopback address.

Never a public share link, analytics off, nothing downloaded. Without --ckpt it uses the demo's
checkpoint (the text model first) or says in one line how to make one.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

DEMO_CHECKPOINTS = ("outputs/demo/model-text.ckpt", "outputs/demo/model.ckpt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", default=None,
                        help="a .ckpt or exported folder (default: the demo's, " + " or ".join(DEMO_CHECKPOINTS) + ")")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--captions", default=None,
                        help="captions.jsonl for the caption examples (default: the embedded corpus's, if built)")


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("gradio") is None:
        print("amadeus studio: gradio is not installed: pip install 'amadeus[studio]'", file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print(f"amadeus studio: error: --port {args.port} is not a port (1-65535)", file=sys.stderr)
        return 2
    ckpt = args.ckpt or next((p for p in DEMO_CHECKPOINTS if Path(p).exists()), None)
    if ckpt is None:
        print("amadeus studio: no checkpoint: run `make demo` (writes outputs/demo/model-text.ckpt) "
              "or pass --ckpt PATH", file=sys.stderr)
        return 2
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from amadeus.studio import build_app

    try:
        app = build_app(ckpt, captions=args.captions)
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError
        print(f"amadeus studio: error: {e}", file=sys.stderr)
        return 2
    print(f"amadeus studio: {ckpt} on http://{args.host}:{args.port}", flush=True)
    app.queue().launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False,
                       show_error=True)
    return 0
