"""The suite. Imported before conftest.py and every test module.

No network from the tests (the download stage's tests serve their files on 127.0.0.1): DVC
would start a process after every `dvc` command to post usage to analytics.dvc.org. The
project's .dvc/config turns that off for its own folder (docs/security.md); this covers the
`dvc init` of the tests' temporary projects, before that config is copied in.
"""

import os

os.environ["DVC_NO_ANALYTICS"] = "1"
