"""The command server (tests/command_server.py) ends commands as a fresh interpreter does.

Each script runs twice, with `subprocess` and through the server, and both give the same
exit code, stdout and stderr. Bugs watched: the server's own argv, working directory,
sys.path or jax settings leaking into the command; exit codes of sys.exit, of an uncaught
exception or Ctrl-C lost; atexit handlers or a non-daemon thread's last writes skipped;
stdout and stderr crossed.
"""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import command_server

SCRIPTS = {
    "exit code": "import sys\nprint('out'); print('err', file=sys.stderr); sys.exit(3)",
    "exit message": "import sys\nsys.exit('went wrong')",
    "exception": "def f():\n    raise ValueError('bad')\nf()",
    "argv, cwd, path": "import os, sys\nprint(sys.argv[1:], os.getcwd(), sys.path[0], __name__)",
    "atexit and threads": textwrap.dedent("""\
        import atexit, threading, time
        atexit.register(print, 'atexit ran')
        threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()
        print('main done')"""),
    "environment": "import os\nprint(os.environ.get('TADAX_PROBE'), os.environ.get('PYTHONPATH'))",
    "Ctrl-C": "import os, signal\nprint('before', flush=True)\nos.kill(os.getpid(), signal.SIGINT)\n"
              "import time\ntime.sleep(5)",
    "killed": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
}


def _both(args, **kwargs):
    real = subprocess.run(args, capture_output=True, text=True, timeout=60, **kwargs)
    served = command_server.run(args, capture_output=True, text=True, timeout=60, **kwargs)
    return real, served


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_script_ends_as_in_a_fresh_interpreter(name, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPTS[name] + "\n")
    env = dict(os.environ, TADAX_PROBE="here", PYTHONPATH=str(tmp_path / "extra"))
    real, served = _both([sys.executable, str(script), "a", "b"], cwd=tmp_path, env=env)
    assert served.returncode == real.returncode, (served, real)
    assert served.stdout == real.stdout
    # Tracebacks name the frames that ran the script: the interpreter's or runpy's.
    assert served.stderr.splitlines()[-1:] == real.stderr.splitlines()[-1:]
    assert ("Traceback" in served.stderr) == ("Traceback" in real.stderr)


def test_a_module_run_and_jax_settings_from_the_environment(tmp_path):
    """`-m MODULE` from the working directory; JAX_PLATFORMS and XLA_FLAGS as given."""
    (tmp_path / "probe.py").write_text(textwrap.dedent("""\
        import sys
        import jax
        print(sys.argv[1:], jax.config.jax_platforms, jax.device_count())"""))
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=3")
    real, served = _both([sys.executable, "-m", "probe", "x"], cwd=tmp_path, env=env)
    assert real.returncode == served.returncode == 0, (real.stderr, served.stderr)
    assert served.stdout == real.stdout == "['x'] cpu 3\n"


def test_signals_reach_the_command_by_its_pid(tmp_path):
    script = tmp_path / "wait.py"
    script.write_text("import time\nprint('waiting', flush=True)\ntime.sleep(60)\n")
    proc = command_server.popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "waiting\n" and proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.communicate(timeout=30)[0] == "" and proc.returncode == -signal.SIGTERM
