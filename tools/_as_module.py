"""The one guard of every tool and benchmark run as a file (``python tools/predict.py``): such a
file cannot import the project's packages, so it imports this module instead, which says how to
run it and exits with status 2 (a user mistake, as util/cli.py's ``run_entry_point``). Run as a
module (``python -m tools.predict``) a tool never imports it."""
import os
import sys

_script = os.path.abspath(sys.argv[0])
_module = f"{os.path.basename(os.path.dirname(_script))}.{os.path.splitext(os.path.basename(_script))[0]}"
print(f"error: run the tools as modules from the repository root: python -m {_module} ...", file=sys.stderr)
raise SystemExit(2)
