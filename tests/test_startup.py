"""What every command does first (tadax.startup): TensorFlow imported without its start-up
lines and without Keras."""

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT

PROBE = """
import json, os, sys
from tadax import startup
startup.import_tensorflow_quietly()
print(json.dumps({"tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules,
                  "pyplot": "matplotlib.pyplot" in sys.modules,
                  "setting": os.environ.get("TF_USE_LEGACY_KERAS")}))
"""


def test_tensorflow_is_imported_quietly_without_keras():
    """Bugs watched: TensorFlow's eager Keras import back (a TensorFlow upgrade that reads
    another setting, the setting dropped: each command then starts ~1 s later, pyplot and
    all); the setting left in the environment of the command's own subprocesses; TensorFlow's
    C++ start-up lines on stderr."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    run = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120, env=dict(env, JAX_PLATFORMS="cpu"))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"tensorflow": True, "keras": False, "pyplot": False,
                                      "setting": None}
    assert run.stderr == ""
