"""The documentation stays true to the code."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_settings_reference_is_generated_from_the_setting_classes():
    out = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_settings.py"), "--check"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (
        "docs/settings.md does not match the companion settings; regenerate it with "
        f"`python docs/gen_settings.py`:\n{out.stderr}")
