# -*- coding: utf-8 -*-
# Copyright: cbt.toolkit contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run one block_sync engine run in a separate process (the kill -9 tests kill it).

    python sync_runner.py '<json SyncRequest keyword arguments>'
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from testbed import ansible_run  # noqa: E402 pylint: disable=wrong-import-position

sys.path.insert(0, str(ansible_run.collections_root()))

from ansible_collections.cbt.toolkit.plugins.module_utils._blockcopy import SyncRequest, run_sync  # noqa: E402


def main():
    kwargs = json.loads(sys.argv[1])
    result = run_sync(SyncRequest(**kwargs))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
