"""Importing this module loads gwcs and asdf with every installed asdf extension.

For the process that forks an embedded cluster's workers (:func:`daskcal.cluster.preload_workers`):
asdf loads its extensions (entry points, manifests) the first time a file is opened, 0.5-0.8 s here,
and every image task that reads a WCS (``wcs_from_text``) would pay it once per worker.
"""

import asdf
import gwcs.wcs  # noqa: F401 - what the WCS trees hold

asdf.get_config().extensions  # noqa: B018 - loads and keeps them in asdf's configuration
