"""Importing this module loads gwcs and asdf with every installed asdf extension.

For the process that forks an embedded cluster's workers (:func:`daskcal.cluster.preload_workers`):
asdf loads its extensions (entry points, manifests) the first time a file is opened, 0.2-0.3 s here
with their manifests parsed by libyaml (:mod:`daskcal.image._asdf`), 0.6-0.7 s without, and every
image task that reads a WCS (``wcs_from_text``) would pay it once per worker.
"""

import gwcs.wcs  # noqa: F401 - what the WCS trees hold

from daskcal.image._asdf import load_extensions

load_extensions()
