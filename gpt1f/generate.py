"""``python -m gpt1f.generate``: the command of ``gpt1f.generation_cli`` (see there).

``gpt1f.generate`` itself is the function ``gpt1f.generation.generate``; this module only runs
the command and is never imported by the package, so the function is not shadowed.
"""
from gpt1f.generation_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
