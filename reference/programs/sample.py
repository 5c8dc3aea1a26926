"""`python -m reference sample`: text from a checkpoint or a Hugging Face model directory.

    python -m reference sample --ckpt out/ckpt.safetensors --prompt "ROMEO:" --stream

The library behind it is reference/programs/sampling/: the next-token rule (logits_process.py),
generation with a key/value cache (generation.py) and streaming text (stream.py). `--stream` prints each
token as it is drawn; Ctrl-C keeps what was printed and exits with status 130. Bad arguments end the
command with one line on stderr and exit status 2.

A sample ends at the model's eos token, as transformers' `generate` ends there (`model_eos`: a
checkpoint's tokenizer eos_token, a model directory's generation_config.json or config.json
eos_token_id); `--eos-token-id ID...` sets it, `--eos-token-id none` turns it off. The eos token is not
printed, as `tokenizer.decode(ids, skip_special_tokens=True)` leaves it out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..fast import use_kernels
from .beam import add_beam_arguments, check_beam_flags, run_beams, until_eos
from .options import add_kernels_argument, check, is_int
from .sampling.generation import eos_ids, generate, iter_generate
from .sampling.logits_process import check_penalty_args, check_sampling_args
from .sampling.stream import TextStream

__all__ = ["add_arguments", "load_hf_dir", "model_eos", "run"]


def load_hf_dir(path):
    """(model, tokenizer) of a Hugging Face model directory: float32 weights (reference/programs/hf.py) and its
    BPE tokenizer files (reference.programs.tokenizers.BPETokenizer). HFError/ValueError name what is missing."""
    from .tokenizers import BPETokenizer
    from .hf import check_dir, from_pretrained
    check_dir(path)                                    # the model's problems are named before the tokenizer's
    tok = BPETokenizer.from_dir(path)
    model = from_pretrained(path, dtype="float32")
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(f"{path}: the tokenizer has {tok.vocab_size} ids, more than the model's vocab_size "
                         f"{model.config.vocab_size}")
    return model, tok


def model_eos(ckpt=None, hf_dir=None) -> list[int] | None:
    """The eos id(s) a model is generated with by default, as transformers' `generate` takes them, or None.

    A model directory (`hf_dir`): generation_config.json's eos_token_id when that file exists (transformers'
    GenerationConfig.from_pretrained), else config.json's (GenerationConfig.from_model_config). A checkpoint
    (`ckpt`, reference/programs/checkpoint.py): its BPE tokenizer's eos_token (tokenizer_settings.special_ids,
    which is what an export writes into generation_config.json); char and byte tokenizers have no eos.
    """
    if hf_dir is not None:
        d = Path(hf_dir)
        source = d / "generation_config.json"
        if not source.is_file():
            source = d / "config.json"
        try:
            value = json.loads(source.read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, ValueError, AttributeError):        # hf.check_dir has named a bad config.json already
            return None
    elif ckpt is not None and ckpt.tokenizer is not None and ckpt.tokenizer.get("kind") == "bpe":
        from .tokenizer_settings import special_ids
        value = special_ids(ckpt.tokenizer)["eos_token_id"]
    else:
        return None
    ids = [value] if is_int(value) else list(value) if isinstance(value, list) else []
    return [int(v) for v in ids if is_int(v)] or None


def resolve_eos(flag, default: list[int] | None, vocab_size: int) -> list[int] | None:
    """The eos ids a run uses: --eos-token-id's (None: not given; [None]: 'none', eos off), else the model's
    default. ValueError naming a given id out of [0, vocab_size); a default id out of it is dropped (it can
    never be drawn, and transformers does not check it either)."""
    if flag is None:
        kept = [e for e in default or [] if 0 <= e < vocab_size]
        return kept or None
    if flag == [None]:
        return None
    try:
        eos_ids(flag, vocab_size)
    except ValueError as e:
        raise ValueError(f"--eos-token-id: {e}") from None
    return list(flag)


DEFAULT_CKPT = "out/ckpt.safetensors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group()              # one model: --ckpt or --init-from
    model.add_argument("--ckpt", default=DEFAULT_CKPT, help=f"checkpoint file (default {DEFAULT_CKPT})")
    model.add_argument("--init-from", "--init_from", dest="init_from", metavar="DIR", default=None,
                        help="sample from a Hugging Face GPT-2 or Llama model directory (config.json, "
                             "model.safetensors and its tokenizer files) instead of --ckpt; needs the hf extra "
                             "(default: none, use --ckpt)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--prompt", default="\n", help="text to continue (default a newline, as nanoGPT)")
    src.add_argument("--prompt-file", help="read the prompt from this UTF-8 file (default: none, use --prompt)")
    parser.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=500,
                        help="tokens to generate per sample, >= 0")
    parser.add_argument("--num-samples", "--num_samples", dest="num_samples", type=int, default=1,
                        help="samples to generate, >= 1")
    parser.add_argument("--temperature", type=float, default=0.8, help="default 0.8 (nanoGPT)")
    parser.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=200,
                        help="keep the k most likely tokens (default 200, as nanoGPT; 0 for no limit)")
    parser.add_argument("--top-p", "--top_p", dest="top_p", type=float, default=None,
                        help="nucleus sampling: keep the most likely tokens up to this mass, in (0, 1] (default: no limit)")
    parser.add_argument("--min-p", "--min_p", dest="min_p", type=float, default=0.0,
                        help="keep the tokens at least this many times as likely as the most likely one, in [0, 1] "
                             "(transformers' min_p; default 0: keep all)")
    parser.add_argument("--repetition-penalty", "--repetition_penalty", dest="repetition_penalty", type=float,
                        default=1.0, help="divide positive and multiply negative logits of the tokens already in the "
                        "text (prompt included) by this, > 0 (transformers' repetition_penalty; default 1: none)")
    parser.add_argument("--presence-penalty", "--presence_penalty", dest="presence_penalty", type=float, default=0.0,
                        help="subtract this from the logit of every token generated so far, in [-2, 2] "
                             "(OpenAI's presence_penalty; default 0)")
    parser.add_argument("--frequency-penalty", "--frequency_penalty", dest="frequency_penalty", type=float,
                        default=0.0, help="subtract this times its count from the logit of every token generated so "
                        "far, in [-2, 2] (OpenAI's frequency_penalty; default 0)")
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    parser.add_argument("--stream", action="store_true",
                        help="print each token as it is generated (a UTF-8 character split over byte tokens "
                             "appears when complete); Ctrl-C stops, keeping what was printed (exit status 130)")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the sampling generator, >= 0")
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole window for every token")
    add_kernels_argument(parser)
    add_beam_arguments(parser)                                 # last: it records the sampling flags' defaults


def run(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, build_model, load_checkpoint
    from .tokenizers import tokenizer_from_dict

    top_k = None if args.top_k == 0 else args.top_k
    try:
        check_sampling_args(args.temperature, top_k, args.top_p, args.greedy)
        check_penalty_args(args.min_p, args.repetition_penalty, args.presence_penalty, args.frequency_penalty)
        check("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 0, ">= 0")
        check("--num-samples", args.num_samples, args.num_samples >= 1, ">= 1")
        check("--seed", args.seed, args.seed >= 0, ">= 0")
        check_beam_flags(args)
        prompt = args.prompt
        if args.prompt_file:
            try:
                with open(args.prompt_file, encoding="utf-8") as f:
                    prompt = f.read()
            except UnicodeDecodeError as e:
                raise ValueError(f"--prompt-file {args.prompt_file} is not UTF-8 text ({e.reason} at byte "
                                 f"{e.start})") from None
            except OSError as e:                      # missing, a directory, unreadable: name the flag
                raise ValueError(f"--prompt-file {args.prompt_file}: {e.strerror or e}") from None
        ckpt = None
        if getattr(args, "init_from", None):
            model, tok = load_hf_dir(args.init_from)
        else:
            ckpt = load_checkpoint(args.ckpt)
            if ckpt.tokenizer is None:
                raise ValueError(f"{args.ckpt} holds no tokenizer, so text cannot be encoded")
            tok = tokenizer_from_dict(ckpt.tokenizer)
        if not prompt:
            raise ValueError("the prompt is empty: give at least one character with --prompt")
        try:
            ids = tok.encode(prompt)
        except ValueError as e:
            raise ValueError(f"the prompt cannot be encoded with the checkpoint's vocabulary: {e}") from None
        if ckpt is not None:
            model = build_model(ckpt)
        eos = resolve_eos(args.eos_token_id, model_eos(ckpt, getattr(args, "init_from", None)),
                          model.config.vocab_size)
        use_kernels(model, getattr(args, "kernels", "fast"))
    except (CheckpointError, FileNotFoundError, ValueError, OSError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    note = ckpt.integrity_note if ckpt is not None else None
    if note:
        print(note, file=sys.stderr)
    if args.num_beams is not None:                             # beam search instead of sampling
        return run_beams(argparse.Namespace(**{**vars(args), "eos_token_id": eos}), model, tok, ids)
    rng = np.random.default_rng(args.seed)
    rule = dict(temperature=args.temperature, top_k=top_k, top_p=args.top_p, greedy=args.greedy, rng=rng,
                use_cache=not args.no_cache, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty, eos_token_id=eos)
    for i in range(args.num_samples):
        try:
            if args.stream:
                _stream(tok, iter_generate(model, ids, args.max_new_tokens, verbose=i == 0, **rule), ids, eos)
            else:
                out = generate(model, ids, args.max_new_tokens, verbose=i == 0, **rule)
                # Written and flushed as soon as it exists; stdout is UTF-8 whatever the locale (reference/programs/cli.py).
                sys.stdout.write(tok.decode(until_eos(out, len(ids), eos)) + "\n")
        except ValueError as e:                   # non-finite logits: a model with non-finite weights
            sys.stdout.flush()
            print(f"error: sample {i + 1}: {e}", file=sys.stderr)
            return 1
        except MemoryError:
            sys.stdout.flush()
            print(f"error: sample {i + 1}: out of memory for {len(ids) + args.max_new_tokens:,} tokens; "
                  "lower --max-new-tokens", file=sys.stderr)
            return 1
        except KeyboardInterrupt:                 # Ctrl-C: keep what was printed, say so, status 130
            sys.stdout.write("\n")
            sys.stdout.flush()
            print("interrupted: generation stopped (Ctrl-C); the text above is what was generated", file=sys.stderr)
            return 130
        if i + 1 < args.num_samples:
            sys.stdout.write("---------------\n")
        sys.stdout.flush()
    return 0


def _stream(tok, steps, prompt_ids, eos=None) -> None:
    """Print the prompt, then each token as it is drawn, flushing every time, up to an eos id, which is not
    printed (sample --stream)."""
    stream = TextStream(tok)
    sys.stdout.write(stream.push(prompt_ids))
    sys.stdout.flush()
    for new, _ in steps:
        if eos and int(new[0]) in eos:
            break
        piece = stream.push(new[:1])                           # one sample at a time: batch of one
        if piece:
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write(stream.finish() + "\n")
    sys.stdout.flush()
