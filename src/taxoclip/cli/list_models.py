"""`taxoclip list-models`: the model ids taxoclip knows."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("list-models", help="list model ids (aliases first, then open_clip architectures)",
                       description="Aliases with their descriptions, then every open_clip architecture. Any "
                                   "hf-hub:ORG/NAME id or directory in the open_clip layout works too.")
    p.add_argument("--model", help="list the pretrained tags of this open_clip architecture")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import open_clip

    from ..models import list_cards

    if args.model:
        for tag in open_clip.list_pretrained_tags_by_model(args.model):
            print(tag)
        return 0
    for card in list_cards():
        print(f"{card.name:<12} {card.source:<32} {card.description}")
    for name in open_clip.list_models():
        print(name)
    return 0
