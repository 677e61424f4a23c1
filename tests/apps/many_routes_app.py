import meshlens.auto  # noqa: F401  (the one line a service adds)
from flask import Flask


app = Flask(__name__)


@app.route("/health")
def health():
    return "ok"


def _handler(name: str):
    def handler(key: str):
        return {"route": name, "key": key}

    handler.__name__ = f"handler_{name}"
    return handler


# A large service: 40 distinct route templates.
for number in range(40):
    app.add_url_rule(f"/r{number}/<key>", view_func=_handler(str(number)))
