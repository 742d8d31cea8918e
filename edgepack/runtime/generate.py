"""Token generation for language-model bundles (manifest `generator`): prefill, then decode token by token.

An island like the loader (standard library, numpy, TVM runtime; `tokenizers` only when installed), shipped in
language-model bundles as `runtime/edgepack_generate.py`:

    python3 runtime/edgepack_generate.py --prompt "Once upon" --max-new-tokens 20
    python3 runtime/edgepack_generate.py --prompt-ids 1,5,9 --max-new-tokens 8 --temperature 0.8 --top-p 0.9 --seed 1
    python3 runtime/edgepack_generate.py verify      # the golden greedy continuation, token by token

Text goes through the bundle's tokenizer.json: with the `tokenizers` package when present, else a small
byte-level BPE reader here (GPT-2 style tokenizers; its pre-tokenizer approximates GPT-2's pattern with `re`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

try:  # in the package
    from .bundle_format import BundleError, KEYRING_ENV, VerificationError, read_checked
    from .loader import LoadedBundle, load
except ImportError:  # inside a bundle: beside edgepack_loader.py and edgepack_format.py
    sys.dont_write_bytecode = True
    from edgepack_format import BundleError, KEYRING_ENV, VerificationError, read_checked  # type: ignore[no-redef]
    from edgepack_loader import LoadedBundle, load  # type: ignore[no-redef]

TOKENIZER_FILE = "tokenizer.json"


class Generator:
    """Generates tokens with a loaded language-model bundle and its bounded KV cache."""

    def __init__(self, bundle: LoadedBundle):
        spec = bundle.manifest.get("generator")
        if not isinstance(spec, dict):
            raise BundleError(f"bundle '{bundle.path}' is not a language model (no 'generator' in its manifest)",
                              "build a model directory with config.json (see docs/llm.md)")
        self.bundle, self.spec = bundle, spec
        self.max_seq_len = int(spec["max_seq_len"])
        self.eos = {int(t) for t in spec.get("eos_token_ids", [])}
        self.vocab_size = int(spec["vocab_size"])

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               seed: int = 0) -> Iterator[int]:
        """Yield new token ids one at a time; stops after an EOS token or `max_new_tokens`."""
        import tvm

        prompt = [int(t) for t in prompt_ids]
        check_request(prompt, max_new_tokens, self.max_seq_len, self.vocab_size, temperature, top_p)
        if max_new_tokens == 0:
            return
        rng = np.random.default_rng(seed)
        cache = self.bundle.call_function("create_cache", with_params=False)
        logits = np.from_dlpack(self.bundle.call_function("prefill", tvm.runtime.tensor(np.array(prompt, np.int32)), cache))[0]
        # decode's input: one tensor, written in place through a numpy view each step (a new tensor per token and
        # .numpy() on its logits cost ~20 µs a token, ~7 % of a small model's decode step)
        ids = tvm.runtime.empty((1,), "int32")
        slot = np.from_dlpack(ids)
        position = len(prompt)
        for produced in range(max_new_tokens):
            token = pick_token(logits, temperature, top_p, rng)
            yield token
            if token in self.eos or produced + 1 == max_new_tokens:
                return
            slot[0] = token
            logits = np.from_dlpack(self.bundle.call_function("decode", ids, cache, position))[0]
            position += 1

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, **sampling) -> list[int]:
        """The new token ids as a list (see `stream`)."""
        return list(self.stream(prompt_ids, max_new_tokens, **sampling))

    def verify(self) -> dict:
        """The golden prompt's greedy continuation against the reference tokens stored in the manifest."""
        golden = self.spec["golden"]
        expected = [int(t) for t in golden["tokens"]]
        got = self.generate(golden["prompt_ids"], len(expected))
        matched = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        return {"engine": "edgepack-python-loader", "passed": got == expected, "tokens": got, "expected": expected,
                "matching_tokens": matched}


def check_request(prompt: list[int], max_new_tokens: int, max_seq_len: int, vocab_size: int, temperature: float, top_p: float) -> None:
    """Refuse a request that would not fit the KV cache or names tokens outside the vocabulary."""
    if not prompt:
        raise BundleError("the prompt is empty", "pass at least one token")
    if max_new_tokens < 0:
        raise BundleError(f"--max-new-tokens must be >= 0, got {max_new_tokens}", "pass 0 or more")
    bad = [t for t in prompt if not 0 <= t < vocab_size]
    if bad:
        raise BundleError(f"token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})", "pass ids the model knows")
    if len(prompt) + max_new_tokens > max_seq_len:
        raise BundleError(f"{len(prompt)} prompt tokens + {max_new_tokens} new tokens exceed the KV cache of {max_seq_len} positions",
                          "shorten the prompt or --max-new-tokens, or rebuild with a larger --max-seq-len")
    if temperature < 0 or not 0 < top_p <= 1:
        raise BundleError(f"temperature {temperature} / top-p {top_p} out of range", "use temperature >= 0 and 0 < top-p <= 1")


def pick_token(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy at temperature 0, else sampling from the smallest top-p set of the tempered distribution."""
    if temperature == 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    cumulative = np.cumsum(probs[order])
    keep = order[: int(np.searchsorted(cumulative, top_p) + 1)]
    kept = probs[keep] / probs[keep].sum()
    return int(keep[rng.choice(len(keep), p=kept)])


# ---------------------------------------------------------------- tokenizer

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


class ByteLevelBpe:
    """A byte-level BPE tokenizer read from tokenizer.json with the standard library (no `tokenizers`)."""

    _SPLIT = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+""")

    def __init__(self, spec: dict):
        model = spec.get("model", {})
        if model.get("type") != "BPE":
            raise BundleError(f"tokenizer.json has a {model.get('type')} model; this reader knows byte-level BPE",
                              "install the `tokenizers` package on the device")
        self.vocab: dict[str, int] = model["vocab"]
        self.inverse = {index: token for token, index in self.vocab.items()}
        for added in spec.get("added_tokens", []):
            self.inverse[int(added["id"])] = added["content"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_map = _bytes_to_unicode()
        self.char_map = {char: byte for byte, char in self.byte_map.items()}

    def _bpe(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), 1 << 60), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, index = min(pairs)
            if rank == 1 << 60:
                break
            parts[index:index + 2] = [parts[index] + parts[index + 1]]
        return parts

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in self._SPLIT.findall(text):
            mapped = "".join(self.byte_map[b] for b in piece.encode("utf-8"))
            for part in self._bpe(mapped):
                if part not in self.vocab:
                    raise BundleError(f"the tokenizer has no token for {part!r}", "install the `tokenizers` package on the device")
                ids.append(self.vocab[part])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text = "".join(self.inverse.get(int(i), "") for i in ids)
        return bytes(self.char_map.get(ch, ord("?")) for ch in text).decode("utf-8", errors="replace")


def load_tokenizer(bundle: LoadedBundle):
    """The bundle's tokenizer (encode/decode), or None when it ships without tokenizer.json."""
    rel = bundle.manifest["generator"].get("tokenizer")
    if not rel:
        return None
    text = read_checked(bundle.path, rel, bundle.manifest["files"][rel]).decode("utf-8")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return ByteLevelBpe(json.loads(text))
    tokenizer = Tokenizer.from_str(text)

    class _Wrapped:
        def encode(self, value: str) -> list[int]:
            return tokenizer.encode(value, add_special_tokens=False).ids

        def decode(self, ids: Sequence[int]) -> str:
            return tokenizer.decode(list(ids), skip_special_tokens=False)

    return _Wrapped()


# ---------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgepack_generate", description="Generate tokens with a language-model bundle.")
    parser.add_argument("command", nargs="?", choices=["generate", "verify"], default="generate")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: the one holding this file)")
    parser.add_argument("--keyring", type=Path, default=None, help=f"trusted public keys (default: ${KEYRING_ENV})")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="prompt text (needs the bundle's tokenizer.json)")
    prompt.add_argument("--prompt-ids", help="comma- or space-separated token ids")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ids", action="store_true", help="print token ids instead of text")
    return parser


def parse_ids(text: str) -> list[int]:
    """Token ids from '1,2,3' or '1 2 3'."""
    try:
        return [int(part) for part in re.split(r"[,\s]+", text.strip()) if part]
    except ValueError:
        raise BundleError(f"--prompt-ids '{text}' is not a list of integers", "pass e.g. --prompt-ids 1,5,9") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        bundle = load(args.bundle or Path(__file__).resolve().parent.parent, args.keyring or os.environ.get(KEYRING_ENV) or None)
        generator = Generator(bundle)
        if args.command == "verify":
            report = generator.verify()
            print(f"generation: {report['matching_tokens']} of {len(report['expected'])} tokens match "
                  f"{'PASS' if report['passed'] else 'FAIL'}")
            if not report["passed"]:
                raise VerificationError("the greedy continuation differs from the golden tokens", "rebuild the bundle or check the device")
            return 0
        tokenizer = load_tokenizer(bundle)
        if args.prompt is not None:
            if tokenizer is None:
                raise BundleError("the bundle has no tokenizer.json to encode text", "pass --prompt-ids")
            prompt = tokenizer.encode(args.prompt)
        elif args.prompt_ids is not None:
            prompt = parse_ids(args.prompt_ids)
        else:
            raise BundleError("no prompt given", "pass --prompt TEXT or --prompt-ids 1,2,3")
        stream = generator.stream(prompt, args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
        if args.ids or tokenizer is None:
            print(" ".join(str(token) for token in stream), flush=True)
        else:
            tokens: list[int] = []
            shown = ""
            for token in stream:  # print text as it grows, token by token
                tokens.append(token)
                text = tokenizer.decode(tokens)
                print(text[len(shown):], end="", flush=True)
                shown = text
            print(flush=True)
    except BundleError as exc:
        print(f"error: {exc.problem}; {exc.fix}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    # only TVM's runtime library on the device; set here, not in main(), so that a host process calling
    # main() keeps the compiler for its own later work and children
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    sys.exit(main())


# ---------------------------------------------------------------- server-sent events (edgepack_serve.py)

def serve_generation(handler, bundle: LoadedBundle, model_lock, max_body_bytes: int) -> None:
    """POST /v1/generate for the bundle's HTTP server: {"prompt": TEXT | "prompt_ids": [...], "max_new_tokens": N,
    "temperature", "top_p", "seed"} answered as server-sent events, one `data: {"token": id, "text": ...}` per
    token, then `data: {"done": true, "tokens": [...]}`. Bad requests get a JSON 400 before any event."""
    try:
        length = handler.headers.get("Content-Length")
        if length is None or not length.isdigit() or int(length) > max_body_bytes:
            raise BundleError("the request needs a Content-Length within the server's limit", "send a small JSON body")
        payload = json.loads(handler.rfile.read(int(length)) or b"{}")
        generator, tokenizer = Generator(bundle), load_tokenizer(bundle)
        if not isinstance(payload, dict):
            raise BundleError("the request body is not a JSON object", 'send {"prompt_ids": [1, 2], "max_new_tokens": 8}')
        if "prompt_ids" in payload:
            prompt = [int(t) for t in payload["prompt_ids"]]
        elif isinstance(payload.get("prompt"), str) and tokenizer is not None:
            prompt = tokenizer.encode(payload["prompt"])
        else:
            raise BundleError("the request has no prompt_ids (or prompt text with a bundled tokenizer)", "add \"prompt_ids\"")
        options = {"temperature": float(payload.get("temperature", 0.0)), "top_p": float(payload.get("top_p", 1.0)),
                   "seed": int(payload.get("seed", 0))}
        max_new = int(payload.get("max_new_tokens", 16))
        check_request(prompt, max_new, generator.max_seq_len, generator.vocab_size, options["temperature"], options["top_p"])
    except (BundleError, ValueError, TypeError) as exc:
        problem = f"{exc.problem}; {exc.fix}" if isinstance(exc, BundleError) else f"bad request ({exc})"
        handler.close_connection = True
        handler._json(400, {"error": problem})
        return
    handler.close_connection = True
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Cache-Control", "no-cache")
    handler.send_header("Connection", "close")
    handler.end_headers()
    tokens: list[int] = []
    with model_lock:
        for token in generator.stream(prompt, max_new, **options):
            tokens.append(token)
            event = {"token": token, **({"text": tokenizer.decode([token])} if tokenizer else {})}
            handler.wfile.write(f"data: {json.dumps(event)}\n\n".encode("utf-8"))
            handler.wfile.flush()
    done = {"done": True, "tokens": tokens, **({"text": tokenizer.decode(tokens)} if tokenizer else {})}
    handler.wfile.write(f"data: {json.dumps(done)}\n\n".encode("utf-8"))
    handler.wfile.flush()
