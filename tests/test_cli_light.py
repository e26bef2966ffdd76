"""`locedit --help` stays light: no torch, diffusers or transformers import until a command runs."""

import subprocess
import sys


def test_help_imports_no_heavy_library():
    code = ("import sys\nfrom locedit.cli import main\n"
            "for argv in (['--help'], ['edit', '--help'], ['instruct', '--help'], ['bench', '--help'], ['invert', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'sklearn', 'PIL') if m in sys.modules)\n"
            "print(','.join(heavy) or 'none')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "none"
