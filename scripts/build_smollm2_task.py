#!/usr/bin/env python
"""Build the offline task tasks/smollm2-135m-l8-offline (corpus + skip-transcoder; `--layer` picks the MLP).

One command, every step resumable (rerun it after an interruption):

    nice -n 19 python scripts/build_smollm2_task.py --cache .cache --threads 2

See harness/build/smollm2_task.py for the steps and options (--steps, --deadline, --work).
"""

import sys

from harness.build.smollm2_task import main

if __name__ == "__main__":
    sys.exit(main())
