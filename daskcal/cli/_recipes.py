"""``daskcal recipes``: list the built-in recipes (``daskcal run NAME IN... OUT`` runs one)."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser(
        "recipes",
        help="list the built-in recipes (run one with 'daskcal run NAME IN... OUT')",
        description="List the recipes installed with daskcal: name, pipeline and description. "
        "'daskcal run NAME IN... OUT' runs one; --path prints where its file is, to copy and edit.",
    )
    p.add_argument("--path", action="store_true", help="also print each recipe's file")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    import tomllib

    from daskcal.cli._run import builtin_recipes, load_recipe

    rows = []
    for name, path in builtin_recipes().items():
        recipe = load_recipe(path)
        with path.open("rb") as fh:
            description = str(tomllib.load(fh).get("description", ""))
        rows.append((name, recipe["pipeline"], description, str(path)))
    width = max(len(r[0]) for r in rows)
    pwidth = max(len(r[1]) for r in rows)
    for name, pipeline, description, path in rows:
        print(f"{name:<{width}}  {pipeline:<{pwidth}}  {description}" + (f"  ({path})" if args.path else ""))
    return 0
