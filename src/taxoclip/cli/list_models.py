"""`taxoclip list-models`: the model ids taxoclip knows."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("list-models", help="list model ids (the bundled model first)",
                       description="Model aliases with their descriptions, the bundled one (the default) first. "
                                   "Any hf-hub:ORG/NAME id or directory in the open_clip layout works too; --all "
                                   "also lists every open_clip architecture name.")
    p.add_argument("--all", action="store_true", help="also list every open_clip architecture (about 150)")
    p.add_argument("--model", help="list the pretrained tags of this open_clip architecture")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models import DEFAULT_MODEL, list_cards

    if args.model:
        import open_clip

        for tag in open_clip.list_pretrained_tags_by_model(args.model):
            print(tag)
        return 0
    for card in list_cards():
        mark = " (default)" if card.name == DEFAULT_MODEL else ""
        print(f"{card.name:<14} {card.source:<36} {card.description}{mark}")
    if args.all:
        import open_clip

        for name in open_clip.list_models():
            print(name)
    return 0
