"""`serve`: an OpenAI-compatible HTTP server for a model, a command of `python -m minillm` (appendix C).

    python -m minillm serve --checkpoint book                       # the book model, on 127.0.0.1:8000
    python -m minillm serve --checkpoint runs/chat --port 8080 --api-key secret --max-batch 16

Then point any OpenAI client at it: `openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret")`,
or open http://127.0.0.1:8000/ for the chat page. `minillm.serve` has the details.
"""

from __future__ import annotations

import argparse

from minillm.cli.common import add_command


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `serve` to the subcommands of `python -m minillm`."""
    p = add_command(
        commands, "serve",
        help="serve a model over HTTP with OpenAI's API (completions, chat, streaming) and a chat page",
        description="Load a model and serve it with the endpoints of OpenAI's API: GET /v1/models, "
        "POST /v1/completions, POST /v1/chat/completions (for a model tuned with the chat template), "
        "streaming as Server-Sent Events; GET / is a chat page and GET /health the server's load. "
        "Requests are decoded together (continuous batching); beyond --max-batch running and "
        "--max-queue waiting the server answers 429. Binds to 127.0.0.1 unless --host says otherwise.",
    )  # fmt: skip
    p.add_argument("--checkpoint", required=True,
                   help="run folder, checkpoint or model folder; 'book' for the book model")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--model-name", default=None, help="the id clients pass as 'model' (default: the folder's name)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/ routes")
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (default 8)")
    p.add_argument("--max-queue", type=int, default=32, help="requests waiting beyond those; more get 429")
    p.add_argument("--max-tokens-limit", type=int, default=None, help="largest max_tokens (default: the context)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take (default 120)")
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """`serve`: build the ServeConfig from the options and serve until Ctrl-C."""
    from pathlib import Path

    from minillm.pretrained import book_run
    from minillm.serve import ServeConfig, serve

    folder = book_run(progress=True)[0] if args.checkpoint == "book" else Path(args.checkpoint)
    name = args.model_name or ("book" if args.checkpoint == "book" else Path(args.checkpoint).resolve().name)
    config = ServeConfig(model_name=name, api_key=args.api_key, max_batch=args.max_batch, max_queue=args.max_queue,
                         max_tokens_limit=args.max_tokens_limit, request_timeout=args.timeout)  # fmt: skip
    print(f"serving {name!r} from {folder} on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    serve(folder, args.host, args.port, config, device=args.device)
    return 0
