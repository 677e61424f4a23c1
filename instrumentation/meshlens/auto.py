"""``import meshlens.auto`` as the first line of a service makes it observable.

Settings come from the environment (see ``docs/settings.md``). Importing this
module twice, or after :func:`meshlens.configure`, changes nothing.
"""

from meshlens._setup import configure

configure()
