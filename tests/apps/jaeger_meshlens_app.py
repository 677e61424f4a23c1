import meshlens.auto  # noqa: F401  (the one line added to the legacy service)
import sys

from jaeger_legacy_app import app

if __name__ == "__main__":
    app.run("127.0.0.1", int(sys.argv[1]), threaded=True)
