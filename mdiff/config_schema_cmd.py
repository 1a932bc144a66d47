"""`mdiff config-schema`: print (or write) the workflow config's JSON schema as YAML."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--output", help="write here instead of printing")


def main(args) -> None:
    from mdiff.config import schema_yaml

    text = schema_yaml()
    if args.output:
        from mdiff.fileio import atomic_path

        with atomic_path(args.output) as tmp:
            tmp.write_text(text)
    else:
        print(text, end="")
