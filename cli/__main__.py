"""``python -m cli``: the same as the ``ringkv`` console script."""

from cli.main import main

main()
