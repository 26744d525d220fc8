# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install ansible-test's offline pip bootstrap.

ansible-test bootstraps pip in each virtual environment it creates with a get-pip script that it
downloads from a host this machine cannot reach, unless the script is already in its cache
(~/.ansible/test/cache/get_pip_<version>.py). This writes a stand-in there that installs pip
with ``ensurepip`` and then the wanted pip version from the package index.

Run with the Python of the environment that has ansible-core installed.
"""

import os
import re
import sys

STANDIN = '''# ansible-test pip bootstrap stand-in written by cbt.toolkit tests/utils/install_get_pip_standin.py
import ensurepip
import os
import subprocess
import sys

saved_env = dict(os.environ)  # ensurepip sets PIP_CONFIG_FILE=/dev/null in-process
ensurepip.bootstrap(upgrade=True)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + args, env=saved_env))
'''


def pip_version():
    import ansible_test._internal.python_requirements as reqs  # pylint: disable=import-outside-toplevel
    with open(reqs.__file__) as handle:
        match = re.search(r"default_packages = dict\(\s*pip='([0-9.]+)'", handle.read())
    if not match:
        sys.exit("install_get_pip_standin: cannot find ansible-test's pip version in %s" % reqs.__file__)
    return match.group(1)


def main():
    version = pip_version()
    path = os.path.expanduser("~/.ansible/test/cache/get_pip_%s.py" % version.replace(".", "_"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    current = None
    if os.path.exists(path):
        with open(path) as handle:
            current = handle.read()
    if current != STANDIN:
        with open(path + ".tmp", "w") as handle:
            handle.write(STANDIN)
        os.replace(path + ".tmp", path)
    print("ansible-test pip %s bootstrap stand-in: %s" % (version, path), file=sys.stderr)


if __name__ == "__main__":
    main()
